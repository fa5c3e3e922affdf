"""The local worker backend: a worker process on the daemon's host, and the daemon's end of its channel.

:class:`LocalBackend` is the :class:`~runhouse.server.backend.WorkerBackend` of a single-node cluster: one
node (this machine), every worker a :class:`WorkerChannel`. :class:`WorkerChannel` implements
:class:`runhouse.server.backend.WorkerHandle` and is itself a :class:`~runhouse.server.backend.WorkerFactory`.
It spawns :mod:`runhouse.server.worker` in the env's
interpreter, in a process group of its own, and keeps one Unix socket pair open for the worker's life; many
requests are in flight at once and replies are matched by request id. Frames are parsed in
``data_received`` without an await per frame, and each payload is copied exactly once, into a buffer of its
final size.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from runhouse import protocol, serialization
from runhouse.errors import WorkerCrashedError
from runhouse.protocol import LogSink
from runhouse.server.backend import Buffer, ExitCallback, Layout, NodeInfo, Reply, Role, Slot, choose_node
from runhouse.server.worker import DIRECT_KEY_ENV

if TYPE_CHECKING:
    from runhouse.server.direct import DirectHub
    from runhouse.server.envs import EnvSpec

# How long a cancelled call may take to stop before its worker is killed (and restarted) to stop it for sure:
# a call blocked in native code cannot be interrupted any other way.
CANCEL_GRACE_S = 2.0
# How long a worker whose channel closed may take to exit before it is killed: it can never serve again, and
# the calls that meet it wait for its exit to say how it died.
EXIT_GRACE_S = 1.0

# The worker's entry point, run with ``python -c`` so the module is imported once under its own name.
_BOOT = "from runhouse.server.worker import main; main()"


class _Protocol(asyncio.Protocol):
    def __init__(self, channel: WorkerChannel) -> None:
        self.channel = channel
        self.frames = protocol.FrameAssembler(protocol.WORKER_HEADER, lambda f: f[2] + f[3], channel._on_frame)
        self.data_received = self.frames.feed  # type: ignore[method-assign]
        self.can_write = asyncio.Event()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()
        self.channel._on_connection_lost()


class WorkerChannel:
    """One worker process of an env and the open channel to it.

    Its members keep the contracts written in :class:`~runhouse.server.backend.WorkerHandle`; ``proc``,
    ``pid`` and ``inflight`` are this backend's own.
    """

    def __init__(self, spec: EnvSpec, python: str, role: Role, on_exit: ExitCallback,
                 direct: DirectHub | None = None) -> None:
        self.env_name, self.python, self.role = spec.name, python, role
        # Calls straight from clients on this machine (main workers only): the hub, and the listener's address.
        self.direct = direct if role == "main" else None
        self.direct_address: str | None = None
        self.env_vars = dict(spec.env_vars)
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.loaded: dict[str, str] = {}
        self.load_lock = asyncio.Lock()
        self.inflight = 0
        self.exit_description: str | None = None
        self.kill_reason: str | None = None  # why the daemon killed it, when it did
        self._on_exit: ExitCallback | None = on_exit  # None once stop() was asked for
        self._pending: dict[int, tuple[asyncio.Future, LogSink | None]] = {}
        self._cancelled: set[int] = set()  # calls cancelled here that the worker has not finished yet
        self._ids = itertools.count(1)
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._process: Any = None  # psutil's handle on the process, kept for CPU% between two statuses

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self._transport is not None and self.exit_description is None

    async def start(self) -> None:
        """Spawn the worker process and connect to it."""
        await self._attach(self._spawn())

    def _spawn(self) -> socket.socket:
        """Start the worker process; returns this end of its channel."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {**os.environ, **self.env_vars, "RH_ENV_NAME": self.env_name, "PYTHONUNBUFFERED": "1"}
        listener = None
        if self.direct is not None:
            listener, self.direct_address = _direct_listener()
            env[DIRECT_KEY_ENV] = self.direct.key_digest.hex()
        try:
            self.proc = spawn_worker(self.python, theirs, env, listener=listener)
        finally:
            theirs.close()
            if listener is not None:
                listener.close()  # the worker's now
        self.started_at = time.time()
        return ours

    async def _attach(self, sock: socket.socket) -> None:
        """Serve the channel on ``sock`` (a connected Unix or TCP stream socket) from now on."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        if sock.family == socket.AF_UNIX:
            self._transport, self._protocol = await loop.create_unix_connection(lambda: _Protocol(self), sock=sock)
        else:
            self._transport, self._protocol = await loop.create_connection(lambda: _Protocol(self), sock=sock)
        self._transport.set_write_buffer_limits(high=4 * 1024 * 1024)

    async def request(
        self, meta: dict[str, Any], parts: Sequence[Buffer] = (), on_log: LogSink | None = None
    ) -> Reply:
        """Send one request and wait for its reply; cancelling the wait cancels the call in the worker.

        Raises:
            WorkerCrashedError: the worker died before replying.
        """
        if not self.alive:
            raise self.crash_error()
        assert self._transport is not None and self._protocol is not None
        loop = asyncio.get_running_loop()
        rid = next(self._ids) & 0xFFFFFFFF
        future: asyncio.Future = loop.create_future()
        self._pending[rid] = (future, on_log)
        meta_bytes = protocol.encode_meta(meta)
        size = sum(memoryview(p).nbytes for p in parts)
        self.inflight += 1
        try:
            if not self._transport.is_closing():  # else the worker is gone: _reap fails the future saying how
                head = protocol.worker_frame_head(protocol.REQUEST, rid, meta_bytes, size)
                if size < protocol.SMALL_FRAME_BYTES:  # one write, one wake-up of the worker
                    self._transport.write(b"".join([head, *parts]))
                else:
                    self._transport.write(head)
                    for part in parts:
                        self._transport.write(part)
                if not self._protocol.can_write.is_set():
                    await self._protocol.can_write.wait()
            try:
                return await future
            except asyncio.CancelledError:
                no_reply = future.cancelled() or not future.done()
                if self.alive and not self._transport.is_closing() and no_reply:
                    self._transport.write(protocol.worker_frame_head(protocol.CANCEL, rid, b"", 0))
                    self._cancelled.add(rid)
                    loop.call_later(CANCEL_GRACE_S, self._kill_if_still_running, rid)
                raise
        finally:
            self.inflight -= 1
            self._pending.pop(rid, None)

    def _on_frame(self, fields: tuple, frame: bytearray) -> None:
        kind, rid, meta_len, _ = fields
        body = memoryview(frame)
        if kind == protocol.EVENTS:
            if self.direct is not None:
                self.direct.on_events(self, protocol.decode_meta(body[:meta_len])["events"])
            return
        entry = self._pending.get(rid)
        if entry is None:
            if kind != protocol.LOG:
                self._cancelled.discard(rid)  # a cancelled call finished; drop its late reply
            return
        future, on_log = entry
        payload = body[meta_len:]
        if kind == protocol.LOG:
            if on_log is not None:
                on_log(bytes(payload))
            return
        meta = protocol.decode_meta(body[:meta_len]) if meta_len else {}
        if not future.done():
            future.set_result(Reply(kind, meta, payload))

    def _kill_if_still_running(self, rid: int) -> None:
        if rid in self._cancelled:
            self.kill(f"did not stop within {CANCEL_GRACE_S} s of a cancelled call")

    def kill(self, reason: str) -> None:
        """Kill the worker (and its process group) now; running calls fail naming ``reason``."""
        if self.alive and self.proc is not None:
            self.kill_reason = reason
            signal_group(self.proc.pid, signal.SIGKILL)

    def _on_connection_lost(self) -> None:
        asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """The channel closed: wait for the process to exit (killing it if it lingers), then fail what is in flight.

        Until this finishes the worker counts as alive, and requests that meet it wait here for the reason.
        """
        proc = self.proc
        code = None
        if proc is not None:
            exited = asyncio.get_running_loop().run_in_executor(None, _wait, proc)
            if self._on_exit is not None and self.kill_reason is None:  # not already being stopped or killed
                try:
                    await asyncio.wait_for(asyncio.shield(exited), EXIT_GRACE_S)
                except asyncio.TimeoutError:
                    self.kill(f"closed its channel to the daemon and did not exit within {EXIT_GRACE_S} s")
            code = await exited
            undelivered = [rid for rid, (future, _) in self._pending.items() if not future.done()]
            owners = {serialization.request_shm_owner(proc.pid, rid) for rid in [*undelivered, *self._cancelled]}
            if owners:  # the buffers of replies it wrote but never sent: nobody will read them
                await asyncio.get_running_loop().run_in_executor(None, serialization.remove_shm, owners)
        self._exited(describe_exit(code))

    def _exited(self, description: str) -> None:
        """Record how the worker ended, fail what is in flight with its crash error, and report the exit."""
        self.exit_description = description
        if self.kill_reason:
            self.exit_description += f" (killed by the daemon: it {self.kill_reason})"
        error = self.crash_error()
        for future, _ in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)
        if self._transport is not None:
            self._transport.close()
        if self.direct is not None:
            self.direct.exited(self)
        if self._on_exit is not None:
            self._on_exit(self)

    def crash_error(self) -> WorkerCrashedError:
        """How the worker ended, as the error its calls raise."""
        code = self.proc.returncode if self.proc else None
        sig = signal.Signals(-code).name if code is not None and code < 0 else None
        return WorkerCrashedError(
            f"the {self.role} worker of env {self.env_name!r} (pid {self.pid}) "
            f"{self.exit_description or 'is not running'}; it is being restarted, retry the call",
            exit_code=code,
            signal=sig,
        )

    async def stop(self, grace: float = 2.0) -> None:
        """Stop the worker and everything it spawned (its process group), TERM first, KILL after ``grace`` s."""
        self._on_exit = None
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGTERM)
            if self._transport is not None:
                self._transport.close()
            try:
                await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, _wait, proc), grace)
            except asyncio.TimeoutError:
                pass
        signal_group(proc.pid, signal.SIGKILL)  # whatever user code left behind in the group
        if proc.poll() is None:
            await asyncio.get_running_loop().run_in_executor(None, _wait, proc)
        if self._transport is not None:
            self._transport.close()

    def memory(self) -> int:
        """Resident memory of the worker process in bytes (0 when it is gone)."""
        from psutil import NoSuchProcess, Process

        try:
            return Process(self.pid).memory_info().rss if self.pid else 0
        except NoSuchProcess:
            return 0

    def cpu_percent(self) -> float:
        """CPU use of the worker process since the previous status (the first one: since it started), in percent
        of one CPU; 0.0 when it is gone."""
        from psutil import NoSuchProcess, Process

        try:
            if self._process is None or self._process.pid != self.pid:
                self._process = Process(self.pid)
                times = self._process.cpu_times()
                elapsed = max(time.time() - self.started_at, 1e-3)
                self._process.cpu_percent(None)  # starts psutil's interval
                return 100.0 * (times.user + times.system) / elapsed
            return self._process.cpu_percent(None)
        except NoSuchProcess:
            return 0.0

    def status(self) -> dict[str, Any]:
        memory = self.memory()
        return {
            "cpu_percent": self.cpu_percent() if self.alive else 0.0,
            "env": self.env_name,
            "role": self.role,
            "pid": self.pid,
            "alive": self.alive,
            "memory_bytes": memory,
            "inflight": self.inflight,
            "uptime_s": time.time() - self.started_at if self.started_at else 0.0,
        }


class LocalBackend:
    """Every worker a local process on this machine, the cluster's one node; ``pool_size`` pool workers per env
    (default: one per CPU)."""

    nodes_version = 0  # one node, always

    def __init__(self, pool_size: int | None = None) -> None:
        self.pool_size = pool_size or os.cpu_count() or 1
        self._node: NodeInfo | None = None
        self.direct: DirectHub | None = None  # set by the daemon to let its clients call main workers directly

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def layout(self, spec: EnvSpec) -> Layout:
        if spec.node is not None or spec.compute:
            if isinstance(spec.node, str) and spec.node in _local_addresses():
                spec = dataclasses.replace(spec, node=0)  # this machine, named by one of its addresses
            choose_node(spec, self.nodes())  # raises when the env asks for what this machine does not have
        return Layout(None, (None,) * self.pool_size)

    def worker(self, spec: EnvSpec, python: str, role: Role, on_exit: ExitCallback, slot: Slot) -> WorkerChannel:
        return WorkerChannel(spec, python, role, on_exit, self.direct)

    def nodes(self) -> list[NodeInfo]:
        if self._node is None:
            self._node = _this_machine()
        return [self._node]


def _this_machine() -> NodeInfo:
    """This machine as the one node of a single-node cluster: its CPUs, GPUs (NVIDIA devices) and memory."""
    import glob

    import psutil

    gpus = len(glob.glob("/dev/nvidia[0-9]*"))
    resources = {"CPU": float(os.cpu_count() or 1), "memory": float(psutil.virtual_memory().total)}
    if gpus:
        resources["GPU"] = float(gpus)
    return NodeInfo(ip="127.0.0.1", index=0, alive=True, resources=resources)


def _local_addresses() -> set[str]:
    import psutil

    return {a.address for addrs in psutil.net_if_addrs().values() for a in addrs} | {"localhost"}


def spawn_worker(python: str, channel: socket.socket, env: dict[str, str], cwd: str | None = None,
                 listener: socket.socket | None = None) -> subprocess.Popen:
    """Start :mod:`runhouse.server.worker` in ``python`` serving ``channel`` (its end of the channel) and, when
    given, direct calls on ``listener``, in a process group of its own: stopping it also stops what user code
    spawned."""
    fds = (channel.fileno(),) + ((listener.fileno(),) if listener is not None else ())
    return subprocess.Popen(
        [python, "-c", _BOOT, *map(str, fds)],
        pass_fds=fds,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _direct_listener() -> tuple[socket.socket, str]:
    """A listening abstract Unix socket for a worker's direct calls, and its address as clients write it
    (``@name``). Abstract: nothing on disk to clean up after a crash; the token is the gate."""
    name = f"runhouse-{os.getpid()}-{secrets.token_hex(8)}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(128)
    return listener, "@" + name


def _wait(proc: subprocess.Popen) -> int:
    return proc.wait()


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group ``pid`` leads (nothing when it is gone)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(code: int | None) -> str:
    """How a worker ended, from its exit code (negative: the signal that killed it), for error messages."""
    if code is None:
        return "stopped"
    if code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"

