"""The worker backend of a multi-node cluster: Ray places the workers, runhouse's channel carries the calls.

The head daemon is a Ray driver of its cluster (token auth, see :mod:`runhouse.server.ray_nodes`). Ray decides
where a worker may run: an env's ``node=`` and ``compute=`` become a launcher actor's node affinity and
resources (:mod:`runhouse.server.ray_launcher`), and an env without them gets a pool of one worker per CPU on
every live node for ``map``. Calls never go through Ray: each remote worker connects back to the daemon's
worker listener (a TCP port on the head's node address, one-time secret per worker; anything else is dropped
after :data:`HANDSHAKE_TIMEOUT_S`) and speaks the same framed channel as a local worker, so a call to another
node costs one TCP round trip more than a local one. Workers beside the daemon (the head's pool share, envs
without placement) stay local processes.

A worker whose launcher cannot be reached when its channel closes was lost with its node: its calls fail with
:class:`~runhouse.errors.NodeLostError`, the node is left out of new layouts until Ray has a verdict on it, and
``map`` runs the items again on the other nodes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from typing_extensions import override

from runhouse.errors import NodeLostError, RunhouseError, WorkerCrashedError
from runhouse.server.backend import ExitCallback, Layout, NodeInfo, Role, Slot, WorkerHandle, choose_node
from runhouse.server.channel import WorkerChannel, describe_exit
from runhouse.server.envs import EnvSpec
from runhouse.server.ray_launcher import WorkerLauncher, tune_channel
from runhouse.server.ray_nodes import ray_environment

# How long a connection to the worker listener may take to prove itself, and how many may try at once (past
# that, the oldest is dropped: idle connections cannot lock workers out).
HANDSHAKE_TIMEOUT_S = 10.0
MAX_HANDSHAKES = 64
SECRET_BYTES = 32
# How long a remote worker may take to start: placement, its env's interpreter on its node, the connection.
START_TIMEOUT_S = 120.0
START_WITH_REQS_TIMEOUT_S = 1800.0
# How long the launcher of a worker whose channel closed may take to say how it ended before the node counts
# as lost.
EXIT_QUERY_TIMEOUT_S = 5.0
STOP_GRACE_S = 2.0
# How often the daemon asks Ray which nodes are alive, and how long a node lost by its workers stays out of
# layouts while Ray still calls it alive.
NODE_POLL_INTERVAL_S = 2.0
LOST_HOLD_S = 60.0


@dataclass(frozen=True)
class RaySlot:
    """A remote worker's place: a Ray node and the resources its launcher holds there."""

    node_id: str
    ip: str
    compute: tuple[tuple[str, float], ...] = ()


class WorkerListener:
    """The head daemon's TCP port that remote workers connect back to; each proves itself with its secret."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._sock: socket.socket | None = None
        self._pending: dict[bytes, asyncio.Future[socket.socket]] = {}
        self._handshakes: dict[asyncio.Task, None] = {}  # in the order they began
        self._task: asyncio.Task | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        return self.host, self._sock.getsockname()[1]

    async def open(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._accept())

    def expect(self, secret: bytes) -> asyncio.Future[socket.socket]:
        """A future for the connection that will present ``secret``."""
        future: asyncio.Future[socket.socket] = asyncio.get_running_loop().create_future()
        self._pending[hashlib.sha256(secret).digest()] = future
        return future

    def forget(self, secret: bytes) -> None:
        self._pending.pop(hashlib.sha256(secret).digest(), None)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            if len(self._handshakes) >= MAX_HANDSHAKES:
                next(iter(self._handshakes)).cancel()
            task = loop.create_task(self._handshake(conn))
            self._handshakes[task] = None
            task.add_done_callback(self._handshakes.pop)

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        handed_over = False
        try:
            secret = await asyncio.wait_for(_receive(loop, conn, SECRET_BYTES), HANDSHAKE_TIMEOUT_S)
            future = self._pending.pop(hashlib.sha256(secret).digest(), None)
            if len(secret) == SECRET_BYTES and future is not None and not future.done():
                tune_channel(conn)
                future.set_result(conn)
                handed_over = True
        except (OSError, asyncio.TimeoutError):
            pass
        finally:  # also when dropped for a newer connection (cancelled)
            if not handed_over:
                conn.close()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._sock is not None:
            self._sock.close()
        for future in self._pending.values():
            future.cancel()


class RayBackend:
    """Workers on every node of the Ray cluster at ``address``; the daemon runs on ``node_ips[0]`` (the head).

    ``node_ips`` are the cluster's ``ips`` in order, which ``node=`` indexes.
    """

    def __init__(self, address: str, node_ips: Sequence[str]) -> None:
        self.address = address
        self.node_ips = list(node_ips)
        self.head_ip = self.node_ips[0]
        self.listener = WorkerListener(self.head_ip)
        self.nodes_version = 0
        self._nodes: list[NodeInfo] = []
        self._lost: dict[str, float] = {}  # node id -> when a worker found it lost
        self._poller: asyncio.Task | None = None
        self._launcher: Any = None
        self.worker_env = {"RAY_ADDRESS": address, **ray_environment()}

    async def start(self) -> None:
        os.environ.update(self.worker_env)  # local workers and commands reach the same Ray
        await asyncio.get_running_loop().run_in_executor(None, self._connect)
        await self.listener.open()
        await self.refresh_nodes()
        self._poller = asyncio.get_running_loop().create_task(self._poll_nodes())

    def _connect(self) -> None:
        import ray

        ray.init(address=self.address, _node_ip_address=self.head_ip, namespace="runhouse", log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
        self._launcher = ray.remote(WorkerLauncher)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        self.listener.close()

    async def _poll_nodes(self) -> None:
        while True:
            await asyncio.sleep(NODE_POLL_INTERVAL_S)
            try:
                await self.refresh_nodes()
            except Exception as exc:  # Ray's control plane is briefly unreachable: keep the last view
                print(f"runhouse: could not list the cluster's nodes: {exc}", file=sys.stderr, flush=True)

    async def refresh_nodes(self) -> list[NodeInfo]:
        """Ask Ray for the nodes now; the set of live ones changing bumps :attr:`nodes_version`."""
        import ray

        raw = await asyncio.get_running_loop().run_in_executor(None, ray.nodes)
        now = time.monotonic()
        by_ip: dict[str, NodeInfo] = {}
        for node in raw:
            ip = node["NodeManagerAddress"]
            lost_at = self._lost.get(node["NodeID"])
            alive = bool(node["Alive"]) and (lost_at is None or now - lost_at > LOST_HOLD_S)
            resources = {k: float(v) for k, v in node.get("Resources", {}).items() if not k.startswith("node:")}
            info = NodeInfo(ip, self._index(ip), alive, resources, node["NodeID"])
            if alive or ip not in by_ip:  # a node that rejoined is listed dead under its old id too
                by_ip[ip] = info
        for ip in self.node_ips:
            by_ip.setdefault(ip, NodeInfo(ip, self._index(ip), False))
        nodes = sorted(by_ip.values(), key=lambda n: (n.index is None, n.index or 0, n.ip))
        if {n.node_id for n in nodes if n.alive} != {n.node_id for n in self._nodes if n.alive}:
            self.nodes_version += 1
        self._nodes = nodes
        return nodes

    def _index(self, ip: str) -> int | None:
        return self.node_ips.index(ip) if ip in self.node_ips else None

    def node_lost(self, node_id: str) -> None:
        """A worker found its node gone: leave it out of layouts (until Ray calls it alive past the hold)."""
        self._lost[node_id] = time.monotonic()
        self._nodes = [NodeInfo(n.ip, n.index, False, n.resources, n.node_id) if n.node_id == node_id else n
                       for n in self._nodes]
        self.nodes_version += 1

    async def layout(self, spec: EnvSpec) -> Layout:
        nodes = await self.refresh_nodes()
        if spec.node is None and not spec.compute:
            pool: list[Slot] = []
            for node in nodes:
                if node.alive:
                    pool += [None if node.ip == self.head_ip else RaySlot(node.node_id, node.ip)] * node.cpus
            return Layout(None, tuple(pool))
        node = choose_node(spec, nodes)
        here = node.ip == self.head_ip
        main = None if here and not spec.compute else RaySlot(node.node_id, node.ip, spec.compute)
        return Layout(main, (None if here else RaySlot(node.node_id, node.ip),) * node.cpus)

    def worker(self, spec: EnvSpec, python: str, role: Role, on_exit: ExitCallback, slot: Slot) -> WorkerHandle:
        if slot is None:
            return WorkerChannel(spec, python, role, on_exit)
        assert isinstance(slot, RaySlot)
        return RemoteWorker(self, spec, role, on_exit, slot)

    def nodes(self) -> list[NodeInfo]:
        return list(self._nodes)

    def launcher(self, slot: RaySlot) -> Any:
        """A new launcher actor for a worker at ``slot`` (pinned to its node, holding its resources)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        compute = dict(slot.compute)
        options: dict[str, Any] = {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(slot.node_id, soft=False),
            "num_cpus": compute.pop("CPU", 0),
            "num_gpus": compute.pop("GPU", 0),
            "max_restarts": 0,
        }
        if "memory" in compute:
            options["memory"] = compute.pop("memory")
        if compute:
            options["resources"] = compute
        return self._launcher.options(**options).remote()


class RemoteWorker(WorkerChannel):
    """A worker on another node: started by a Ray launcher actor there, spoken to over a TCP channel.

    Keeps the :class:`~runhouse.server.backend.WorkerHandle` contract; only starting, ending and describing
    the process differ from a local :class:`~runhouse.server.channel.WorkerChannel`.
    """

    def __init__(self, backend: RayBackend, spec: EnvSpec, role: Role, on_exit: ExitCallback, slot: RaySlot) -> None:
        super().__init__(spec, "", role, on_exit)
        self._backend, self._spec, self.slot = backend, spec, slot
        self._actor: Any = None
        self._pid: int | None = None
        self._memory = 0
        self.node_lost = False

    @override
    @property
    def pid(self) -> int | None:
        return self._pid

    @override
    async def start(self) -> None:
        secret = secrets.token_bytes(SECRET_BYTES)
        connected = self._backend.listener.expect(secret)
        timeout = START_WITH_REQS_TIMEOUT_S if self._spec.reqs else START_TIMEOUT_S
        self._actor = self._backend.launcher(self.slot)
        launched = self._actor.launch.remote(self._spec.to_dict(), self._backend.listener.address, secret,
                                             self._backend.worker_env)
        try:
            self._pid = await asyncio.wait_for(_wait_ref(launched), timeout)
            sock = await asyncio.wait_for(connected, HANDSHAKE_TIMEOUT_S)
        except BaseException as exc:
            self._backend.listener.forget(secret)
            self._end_actor()
            raise self._start_error(exc, timeout) from None
        self.started_at = time.time()
        await self._attach(sock)

    def _start_error(self, exc: BaseException, timeout: float) -> BaseException:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RunhouseError):
            return cause  # e.g. EnvCreationError: the env's requirements failed to install on that node
        where = f"the {self.role} worker of env {self.env_name!r} on node {self.slot.ip}"
        if isinstance(exc, asyncio.TimeoutError):
            return WorkerCrashedError(f"{where} did not start within {timeout:.0f} s; the resources it asks for "
                                      f"({dict(self.slot.compute) or 'none'}) may be held by other envs")
        if isinstance(exc, asyncio.CancelledError):
            return exc
        return NodeLostError(f"{where} could not be started: {type(exc).__name__}: {exc}", node=self.slot.ip)

    @override
    async def request(self, meta: dict[str, Any], parts: Sequence[Any] = (), on_log: Any = None) -> Any:
        if meta.get("shm"):  # shared memory is the head's: another node answers in the channel
            meta = {**meta, "shm": False}
        return await super().request(meta, parts, on_log)

    @override
    def kill(self, reason: str) -> None:
        if self.alive and self._actor is not None:
            self.kill_reason = reason
            self._actor.kill.remote()

    @override
    async def _reap(self) -> None:
        """The channel closed: learn from the launcher how the worker ended (none answering: the node is lost),
        then fail what is in flight."""
        code: int | None = None
        try:
            grace = 0.0 if self._on_exit is None or self.kill_reason else 1.0
            code = await asyncio.wait_for(_wait_ref(self._actor.wait_exit.remote(grace)), EXIT_QUERY_TIMEOUT_S)
        except Exception:
            self.node_lost = True
            self._backend.node_lost(self.slot.node_id)
        self.exit_code = code
        self._end_actor()
        self._exited(f"was lost with its node {self.slot.ip}" if self.node_lost else describe_exit(code))

    @override
    def crash_error(self) -> WorkerCrashedError:
        where = f"the {self.role} worker of env {self.env_name!r} on node {self.slot.ip} (pid {self._pid})"
        if self.node_lost:
            return NodeLostError(f"{where} was lost with its node {self.slot.ip}", node=self.slot.ip)
        code = getattr(self, "exit_code", None)
        return WorkerCrashedError(
            f"{where} {self.exit_description or 'is not running'}; it is being restarted, retry the call",
            exit_code=code,
        )

    @override
    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        self._on_exit = None
        if self._actor is None:
            return
        try:
            await asyncio.wait_for(_wait_ref(self._actor.stop.remote(grace)), grace + EXIT_QUERY_TIMEOUT_S)
        except Exception:  # the node is gone, and the worker with it
            pass
        if self._transport is not None:
            self._transport.close()
        self._end_actor()

    def _end_actor(self) -> None:
        if self._actor is not None:
            import ray

            ray.kill(self._actor, no_restart=True)

    @override
    def memory(self) -> int:
        import ray

        try:
            self._memory = int(ray.get(self._actor.memory.remote(), timeout=EXIT_QUERY_TIMEOUT_S))
        except Exception:
            self._memory = 0
        return self._memory

    @override
    def status(self) -> dict[str, Any]:
        return {
            "env": self.env_name,
            "role": self.role,
            "pid": self._pid,
            "node": self.slot.ip,
            "alive": self.alive,
            "memory_bytes": self._memory,
            "inflight": self.inflight,
            "uptime_s": time.time() - self.started_at if self.started_at else 0.0,
        }


async def _receive(loop: asyncio.AbstractEventLoop, conn: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes from ``conn`` (fewer when it closes first)."""
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(conn, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _wait_ref(ref: Any) -> Awaitable[Any]:
    """Await a Ray object ref on this event loop."""
    return asyncio.wrap_future(ref.future())
