"""The worker-backend seam: what the daemon needs from one worker of an env, wherever that worker runs.

The runtime (:mod:`runhouse.server.runtime`) never runs user code. It sends requests (meta naming a
:class:`runhouse.protocol.WorkerOp`, plus a payload) to workers through :class:`WorkerHandle` and reads
their :class:`Reply`. Each env (:class:`runhouse.server.envs.EnvRuntime`) asks the daemon's
:class:`WorkerBackend` where its workers go (:meth:`WorkerBackend.layout`: one slot for its main worker, one
per pool worker) and has it make each one; ``EnvRuntime.fanout_workers`` says how a ``map`` spreads over them.

Backends:

- :class:`runhouse.server.channel.LocalBackend` (single-node clusters): every worker is a
  :class:`~runhouse.server.channel.WorkerChannel`, a child process of the daemon running
  :mod:`runhouse.server.worker`, reached over a Unix socket pair;
- :class:`runhouse.server.ray_backend.RayBackend` (multi-node clusters): Ray places workers on the nodes
  (``node=``, ``compute=`` of the env, a pool over every node's CPUs) and its handles carry the same requests
  to a worker on another node over an authenticated TCP channel. Workers beside the daemon stay local.

The protocols here exist for the type checker only: the runtime calls a handle's methods directly, so the
seam costs nothing per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from runhouse.errors import BadRequestError
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


# Where one worker runs, as its backend names it; None is "beside the daemon, as a local process".
Slot = Hashable | None


@dataclass(frozen=True)
class Layout:
    """Where an env's workers go: its main worker's slot and one slot per pool worker."""

    main: Slot
    pool: tuple[Slot, ...]


@dataclass(frozen=True)
class NodeInfo:
    """One node of the cluster as a backend sees it (for placement and ``cluster.status()``)."""

    ip: str
    index: int | None  # position in the cluster's ``ips`` (0: the head), None for a node runhouse did not list
    alive: bool
    resources: Mapping[str, float] = field(default_factory=dict)  # totals: "CPU", "GPU", "memory", custom ones
    node_id: str = ""  # the backend's own name for it (Ray's node id)

    @property
    def cpus(self) -> int:
        return max(1, int(self.resources.get("CPU", 1)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "index": self.index,
            "alive": self.alive,
            "cpus": self.resources.get("CPU", 0),
            "gpus": self.resources.get("GPU", 0),
            "memory_bytes": int(self.resources.get("memory", 0)),
            "resources": dict(self.resources),
        }


def choose_node(spec: EnvSpec, nodes: Sequence[NodeInfo]) -> NodeInfo:
    """The node env ``spec`` runs on: the one its ``node`` names, else the first live one (head first) with its
    ``compute``; the head when it asks for neither.

    Raises:
        BadRequestError: ``node`` names no node, names a dead one or one without the ``compute``, or no live node
            has the ``compute``; the message lists the nodes and what each has.
    """
    compute = dict(spec.compute)
    if spec.node is not None:
        node = _named_node(spec.node, nodes)
        if not node.alive:
            raise BadRequestError(f"env {spec.name!r}: node {spec.node!r} ({node.ip}) is not alive; bring it back "
                                  "with cluster.up_if_not() or place the env on another node")
        if not fits(compute, node.resources):
            raise BadRequestError(f"env {spec.name!r}: node {spec.node!r} ({node.ip}) has {_resources(node)}, "
                                  f"not compute={compute}")
        return node
    for node in nodes:
        if node.alive and fits(compute, node.resources):
            return node
    raise BadRequestError(
        f"env {spec.name!r}: no node has compute={compute}; the nodes have: "
        + "; ".join(f"{n.ip}{'' if n.alive else ' (dead)'}: {_resources(n)}" for n in nodes)
    )


def _named_node(name: int | str, nodes: Sequence[NodeInfo]) -> NodeInfo:
    for node in nodes:
        if name == node.index or name == node.ip:
            return node
    listed = ", ".join(f"{n.index}: {n.ip}" for n in nodes if n.index is not None)
    raise BadRequestError(f"node={name!r} names no node of this cluster; use an index or an ip of: {listed}")


def fits(compute: Mapping[str, float], resources: Mapping[str, float]) -> bool:
    """Whether a node with ``resources`` (totals) has what ``compute`` asks for."""
    return all(resources.get(name, 0) >= amount for name, amount in compute.items())


def _resources(node: NodeInfo) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(node.resources.items()) if not k.startswith("node:")) or "nothing"


class WorkerBackend(Protocol):
    """Where an env's workers run, and how they are made: the daemon has one backend for all its envs."""

    @property
    def nodes_version(self) -> int:
        """A number that changes whenever the set of live nodes does (envs then lay out their pools again)."""
        ...

    async def start(self) -> None:
        """Get ready to make workers (connect to the cluster); called once, before anything else."""
        ...

    async def stop(self) -> None:
        """Release what :meth:`start` made; the envs stopped their workers first."""
        ...

    async def layout(self, spec: EnvSpec) -> Layout:
        """Where env ``spec``'s main worker and pool workers go, among the nodes alive now.

        Raises:
            BadRequestError: the env's ``node`` or ``compute`` cannot be met (see :func:`choose_node`), within
                seconds: never a wait for resources that no node has.
        """
        ...

    def worker(self, spec: EnvSpec, python: str, role: Role, on_exit: ExitCallback, slot: Slot) -> WorkerHandle:
        """A handle (not started) on a new worker of env ``spec`` at ``slot`` (one of :meth:`layout`'s), as
        :class:`WorkerFactory` makes them."""
        ...

    def nodes(self) -> list[NodeInfo]:
        """The cluster's nodes as last seen (no waiting), for ``cluster.status()``."""
        ...
