"""The daemon's side of direct calls: clients on this machine calling an env's main worker straight.

A call through the daemon crosses two hops (client -> daemon -> worker); a direct call crosses one. The
daemon stays the control plane and the token gate: :meth:`DirectHub.route` (``Op.ROUTE``, for holders of
the daemon's own token) loads an object into its env's main worker and answers with the worker's listener
address, and the worker (:class:`runhouse.server.worker._DirectServer`) accepts only connections that
present the same token. Only plain calls go direct; anything with refs, a timeout, a queue, ``.remote()``
or a run name, every control operation, JSON callers (curl) and Den-token callers go through the daemon.

What direct calls did reaches the hub as worker EVENTS frames: each becomes a run in the daemon's
:class:`~runhouse.server.runs.RunStore` (so ``cluster.runs()``, logs, ``/metrics``, Den heartbeats and the
idle timer see it as any call), after :meth:`flush` on anything that reads them. Crash semantics are the
daemon's: a worker that dies mid-call fails its open runs as crashed, the client's call raises the same
:class:`~runhouse.errors.WorkerCrashedError` (:meth:`crashed`), and a cancelled call that does not stop
within ``CANCEL_GRACE_S`` gets its worker killed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runhouse import protocol, serialization
from runhouse.errors import WorkerCrashedError
from runhouse.protocol import WorkerOp
from runhouse.server.channel import CANCEL_GRACE_S, EXIT_GRACE_S, LocalBackend, WorkerChannel
from runhouse.server.den_auth import DAEMON_CALLER
from runhouse.server.runs import CALL, CRASHED, DONE, Run, ended_with
from runhouse.server.worker import DIRECT_RID_BIT

if TYPE_CHECKING:
    from runhouse.server.runtime import Runtime

# Exited workers remembered for the crash questions of their direct callers.
_KEPT_EXITS = 64


class DirectHub:
    """Routes, runs and crashes of direct calls for one daemon; ``key_digest`` is the SHA-256 of the token a
    direct connection must present."""

    def __init__(self, runtime: Runtime, token: str, count_call: Callable[[], None]) -> None:
        self.runtime = runtime
        self.key_digest = hashlib.sha256(token.encode()).digest()
        self._count_call = count_call
        self._open: dict[WorkerChannel, dict[int, Run]] = {}  # the direct calls each worker is running
        self._workers: dict[int, WorkerChannel] = {}  # pid -> worker that served direct calls
        self._exited: OrderedDict[int, WorkerChannel] = OrderedDict()
        self._crashed_runs: dict[int, int] = {}  # pid of an exited worker -> its runs failed at its exit

    @classmethod
    def attach(cls, runtime: Runtime, token: str, count_call: Callable[[], None]) -> DirectHub | None:
        """A hub for ``runtime``'s workers when they run on this machine (else None: no direct calls)."""
        if not isinstance(runtime.backend, LocalBackend):
            return None
        hub = cls(runtime, token, count_call)
        runtime.backend.direct = hub
        return hub

    async def route(self, name: str) -> dict[str, Any] | None:
        """Where to call ``name`` directly: its env's main worker, with the object loaded (None: not directly).

        Raises:
            ObjectNotFoundError: no object ``name``.
        """
        runtime = self.runtime
        entry = runtime.registry.entry(name)
        if entry.kind not in ("function", "class", "instance"):
            return None
        worker = await (await runtime.env_runtime(entry.env)).main_worker()
        if not isinstance(worker, WorkerChannel) or worker.direct_address is None or worker.pid is None:
            return None
        await runtime._load(worker, entry)
        self._workers[worker.pid] = worker
        function = entry.kind == "function"
        methods = [protocol.CALL_METHOD, "__call__"] if function else list(entry.info.get("methods", {}))
        return {"address": worker.direct_address, "pid": worker.pid, "methods": methods}

    async def crashed(self, pid: int, name: str, method: str) -> WorkerCrashedError:
        """The error of a direct call to ``name.method`` whose worker ``pid`` closed the connection mid-call,
        once the daemon has seen the worker exit; the call is recorded as a crashed run."""
        worker = self._workers.get(pid) or self._exited.get(pid)
        if worker is None:
            return WorkerCrashedError(f"the worker (pid {pid}) running {name}.{method} went away mid-call")
        deadline = time.monotonic() + EXIT_GRACE_S + 5.0
        while worker.exit_description is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        error = worker.crash_error()
        if self._crashed_runs.get(pid):  # its open runs were failed when it exited: this call's is one of them
            self._crashed_runs[pid] -= 1
        else:  # it died before telling the daemon the call started
            runs = self.runtime.runs
            run = runs.start(name, method, CALL, worker.env_name, pid, DAEMON_CALLER, None)
            runs.finish(run, CRASHED, str(error))
        return error

    async def flush(self) -> None:
        """Have every worker that served direct calls send what they did (before the runs are read)."""
        workers = [w for w in self._workers.values() if w.alive]
        await asyncio.gather(*(w.request({"op": WorkerOp.FLUSH}) for w in workers), return_exceptions=True)

    # --- from the workers ------------------------------------------------------------------------------
    def on_events(self, worker: WorkerChannel, events: list[tuple]) -> None:
        runs, idle, metrics = self.runtime.runs, self.runtime.idle, self.runtime.metrics
        open_runs = self._open.setdefault(worker, {})
        received = sent = 0
        for event in events:
            what, drid = event[0], event[1]
            if what == "start":
                _, _, name, method, started_at, size = event
                received += size
                started = runs.start(name, method, CALL, worker.env_name, worker.pid, DAEMON_CALLER, None)
                started.started_at = started_at
                open_runs[drid] = started
                idle.begin()
                self._count_call()
            elif what == "out":
                run = open_runs.get(drid)
                if run is not None and runs.enabled:
                    run(event[2])
            elif what == "end":
                run = open_runs.pop(drid, None)
                if run is not None:
                    _, _, info, ended_at, size = event
                    sent += size
                    status, error = ended_with(info) if info else (DONE, None)
                    runs.finish(run, status, error, ended_at)
                    idle.end()
            elif what == "cancelled":
                asyncio.get_running_loop().call_later(CANCEL_GRACE_S, self._kill_if_running, worker, drid)
        metrics.bytes_in.inc(received)
        metrics.bytes_out.inc(sent)

    def _kill_if_running(self, worker: WorkerChannel, drid: int) -> None:
        if drid in self._open.get(worker, {}):
            worker.kill(f"did not stop within {CANCEL_GRACE_S} s of a cancelled call")

    def exited(self, worker: WorkerChannel) -> None:
        """``worker`` exited: its open direct calls end as crashed, the shared memory of replies it wrote to
        direct callers goes (a reply it got to send was read at once)."""
        if worker.pid is not None:
            asyncio.get_running_loop().run_in_executor(None, _remove_direct_buffers, worker.pid)
        open_runs = self._open.pop(worker, {})
        error = str(worker.crash_error())
        for run in open_runs.values():
            self.runtime.runs.finish(run, CRASHED, error)
            self.runtime.idle.end()
        if worker.pid is not None and self._workers.pop(worker.pid, None) is not None:
            self._exited[worker.pid] = worker
            self._crashed_runs[worker.pid] = len(open_runs)
            while len(self._exited) > _KEPT_EXITS:
                self._crashed_runs.pop(self._exited.popitem(last=False)[0], None)


def _remove_direct_buffers(pid: int) -> int:
    """Remove the shared-memory buffers worker ``pid`` wrote for replies to direct calls, its pool's too."""
    prefix = f"{pid}-"
    pool = f"{pid}{serialization.POOL_MARK[:-1]}"

    def direct(owner: str) -> bool:
        rid = owner[len(prefix):]
        return owner == pool or (owner.startswith(prefix) and rid.isdigit() and bool(int(rid) & DIRECT_RID_BIT))

    return serialization.remove_shm(direct)
