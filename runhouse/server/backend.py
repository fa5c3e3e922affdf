"""The worker-backend seam: what the daemon needs from one worker of an env, wherever that worker runs.

The runtime (:mod:`runhouse.server.runtime`) never runs user code. It sends requests (meta naming a
:class:`runhouse.protocol.WorkerOp`, plus a payload) to workers through :class:`WorkerHandle` and reads
their :class:`Reply`. Each env (:class:`runhouse.server.envs.EnvRuntime`) makes its workers with a
:class:`WorkerFactory` and decides how a ``map`` spreads over them (``EnvRuntime.fanout_workers``).

Backends:

- the local process, :class:`runhouse.server.channel.WorkerChannel` (the default): a child process of the
  daemon running :mod:`runhouse.server.worker`, reached over a Unix socket pair;
- a Ray backend (workers on the other nodes of a multi-node cluster) plugs in by passing its own factory to
  :class:`runhouse.server.runtime.Runtime`; its handles carry the same requests to a worker on another node.

The protocols here exist for the type checker only: the runtime calls a handle's methods directly, so the
seam costs nothing per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from runhouse.protocol import LogSink

if TYPE_CHECKING:
    from runhouse.server.envs import EnvSpec

# A worker's part in its env: ``main`` holds the env's named objects and stored values; ``pool`` workers
# are the extra ones a ``map`` of a function spreads over.
Role = Literal["main", "pool"]
# A buffer that is part of a request's payload.
Buffer = bytes | bytearray | memoryview


class Reply:
    """A worker's answer to one request.

    ``kind`` is :data:`runhouse.protocol.RESULT` (``payload`` a serialized value, or empty) or
    :data:`runhouse.protocol.ERROR` (``payload`` the packed exception, see
    :func:`runhouse.serialization.pack_exception`); ``meta`` holds the operation's other answers (``info`` of
    a deploy, ``stored`` of a call kept as a ref).
    """

    __slots__ = ("kind", "meta", "payload")

    def __init__(self, kind: int, meta: dict[str, Any], payload: memoryview) -> None:
        self.kind, self.meta, self.payload = kind, meta, payload


class WorkerHandle(Protocol):
    """The daemon's handle on one worker of an env.

    A handle is made (not started) by a :class:`WorkerFactory`, started once, and used until the worker
    exits (a crash, :meth:`kill`) or is stopped. It is never restarted: the env makes a new one, which
    starts with nothing loaded.
    """

    @property
    def loaded(self) -> dict[str, str]:
        """Object name -> version of it loaded in this worker.

        Bookkeeping of the runtime, kept here because it lives exactly as long as the worker: the
        implementation creates it empty and never touches it again.
        """
        ...

    @property
    def load_lock(self) -> asyncio.Lock:
        """Held by the runtime while it loads an object into this worker (owned like :attr:`loaded`)."""
        ...

    @property
    def alive(self) -> bool:
        """True from the end of :meth:`start` until the worker exits or is stopped."""
        ...

    @property
    def started_at(self) -> float:
        """When :meth:`start` ran (``time.time()``), 0.0 before; the env uses it to avoid restart loops."""
        ...

    async def start(self) -> None:
        """Start the worker and connect to it; when this returns, :attr:`alive` is true.

        Raises:
            OSError: the worker could not be started.
        """
        ...

    async def request(self, meta: dict[str, Any], parts: Sequence[Buffer] = (), on_log: LogSink | None = None) -> Reply:
        """Send one request and await its reply; any number may be in flight at once.

        ``meta`` names the operation (``op``, a :class:`runhouse.protocol.WorkerOp`) and carries its fields;
        ``parts`` make up the payload, in order, neither copied nor kept after the reply; ``on_log`` receives
        the request's LOG output (whole UTF-8 lines) as it arrives. Cancelling the await cancels the call in
        the worker; a call that does not stop soon after may be ended by killing the worker.
        This is the call hot path: one send and one await, no more.

        Returns:
            A RESULT reply, or an ERROR reply carrying the exception user code raised.

        Raises:
            WorkerCrashedError: the worker is not alive, or died before replying; this is the only error a
                request that meets a dead worker raises, wherever in the request it met it.
        """
        ...

    def kill(self, reason: str) -> None:
        """Kill the worker now, with everything it runs; nothing when it is not alive.

        In-flight requests fail with a ``WorkerCrashedError`` naming ``reason``, then the exit callback
        given to the factory runs.
        """
        ...

    async def stop(self) -> None:
        """Stop the worker and everything it started, and wait until it is gone.

        The exit callback is not called. Safe before :meth:`start` and more than once.
        """
        ...

    def memory(self) -> int:
        """Memory the worker uses, in bytes (0 when it is gone or unknown), for the env's memory limit.

        May block: callers run it on a thread, never on the event loop.
        """
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-able description for ``cluster.status()``, with at least ``env``, ``role`` and ``alive``."""
        ...


ExitCallback = Callable[[WorkerHandle], None]


class WorkerFactory(Protocol):
    """Makes one worker of an env, not yet started: how a backend plugs into the daemon."""

    def __call__(self, spec: EnvSpec, python: str, role: Role, on_exit: ExitCallback) -> WorkerHandle:
        """A handle on a new worker of env ``spec``.

        Args:
            spec: the env (its name, environment variables, memory limit, requirements).
            python: the interpreter on the daemon's host that has the env's requirements installed.
            role: the worker's part in its env (see :data:`Role`).
            on_exit: called once, on the event loop, when the worker exits without :meth:`WorkerHandle.stop`
                (a crash, :meth:`WorkerHandle.kill`), after its in-flight requests failed.
        """
        ...
