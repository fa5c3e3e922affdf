"""Client end of direct calls: a call sent straight to the env worker that runs it, on this machine.

The daemon answers ``Op.ROUTE`` with a worker's listener address (an abstract Unix socket) for a deployed
object; :class:`DirectCalls` keeps those routes per object name and one connection per thread per worker,
opened with a HELLO frame carrying the daemon's token and kept alive. Frames are the daemon <-> worker
frames of :mod:`runhouse.protocol`. See :mod:`runhouse.server.direct` for what goes direct and what does not.

A route that no longer leads anywhere (the worker restarted, the object moved or is gone) costs nothing
but the fallback: connecting or sending fails (a Unix socket whose other end has closed refuses data at
once), or the worker answers ``missing`` without running anything, and the call goes through the daemon,
which routes the next one afresh. A connection that closes mid-call means
the worker died: :class:`WorkerGone` says so and the caller asks the daemon for the crash error.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from runhouse import protocol
from runhouse.lifetime import Closeable
from runhouse.transport.client import Response

_RECV_CHUNK = 256 * 1024
# How long the only call in flight in this process polls for its reply before it sleeps until it comes: a
# thread woken from sleep (its CPU from idle) adds tens of microseconds to a call that takes about a hundred.
# Concurrent calls never poll (they would take the CPU the worker needs); 0 turns polling off.
SPIN_S = float(os.environ.get("RH_DIRECT_SPIN_US", "60")) / 1e6
_everyone: weakref.WeakSet[DirectCalls] = weakref.WeakSet()
_in_flight = 0  # direct calls in flight in this process


class Unroutable(Exception):
    """The call cannot go direct (nothing was run): send it through the daemon."""


class _NotSent(Exception):
    """Sending failed: the worker's end of a kept-alive connection was closed (a Unix socket says so at once)."""


class WorkerGone(Exception):
    """The worker closed the connection mid-call: it died (the call may have run in part)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"worker {pid} went away")
        self.pid = pid


class Route:
    """Where the calls of object ``name`` go: a worker's listener ``address`` (``@name``: abstract), its
    ``pid``, and the methods that may be called there."""

    __slots__ = ("name", "address", "pid", "methods", "_metas")

    def __init__(self, name: str, address: str, pid: int, methods: Sequence[str]) -> None:
        self.name, self.address, self.pid, self.methods = name, address, pid, frozenset(methods)
        self._metas: dict[tuple[str, bool, bool], bytes] = {}

    def meta(self, method: str, stream_logs: bool, shm: bool) -> bytes:
        """The encoded meta of a call of ``method`` (made once per kind of call)."""
        key = (method, stream_logs, shm)
        encoded = self._metas.get(key)
        if encoded is None:
            meta = {"name": self.name, "method": method, "stream_logs": stream_logs, "shm": shm}
            encoded = self._metas[key] = protocol.encode_meta(meta)
        return encoded


class _Connection:
    """One authenticated connection to a worker; one call at a time (each thread has its own)."""

    def __init__(self, address: str, token: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect("\0" + address[1:] if address.startswith("@") else address)
        except OSError:
            self.sock.close()
            raise
        self.view = memoryview(bytearray(_RECV_CHUNK))
        self.final: tuple[int, dict, bytearray] | None = None
        self.on_log: protocol.LogSink | None = None
        self.frames = protocol.FrameAssembler(protocol.WORKER_HEADER, lambda f: f[2] + f[3], self._on_frame)
        self.ids = itertools.count(1)
        secret = token.encode()
        self.sock.sendall(protocol.WORKER_HEADER.pack(protocol.HELLO, 0, 0, len(secret)) + secret)
        self._receive()  # the worker's welcome; it closes instead when the token is wrong

    def close(self) -> None:
        self.sock.close()

    def _on_frame(self, fields: tuple, body: bytearray) -> None:
        kind, _, meta_len, _ = fields
        if kind == protocol.LOG:
            if self.on_log is not None:
                self.on_log(bytes(memoryview(body)[meta_len:]))
            return
        meta = protocol.decode_meta(memoryview(body)[:meta_len]) if meta_len else {}
        self.final = (kind, meta, body[meta_len:] if meta_len else body)

    def _receive(self, spin: float = 0.0) -> tuple[int, dict, bytearray]:
        self.final = None
        view = self.view
        count = self._first_read(view, spin) if spin else self.sock.recv_into(view)
        head = protocol.WORKER_HEADER.size
        if count >= head and self.frames.idle:  # the usual reply: one whole frame in one read
            kind, _, meta_len, size = protocol.WORKER_HEADER.unpack_from(view)
            if kind != protocol.LOG and head + meta_len + size == count:
                meta = protocol.decode_meta(view[head : head + meta_len]) if meta_len else {}
                return kind, meta, bytearray(view[head + meta_len : count])
        if count == 0:
            raise EOFError("the worker closed the connection")
        self.frames.feed(view[:count])
        while self.final is None:
            count = self.sock.recv_into(view)
            if count == 0:
                raise EOFError("the worker closed the connection")
            self.frames.feed(view[:count])
        return self.final

    def _first_read(self, view: memoryview, spin: float) -> int:
        deadline = time.perf_counter() + spin
        while True:
            try:
                return self.sock.recv_into(view, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if time.perf_counter() >= deadline:
                    return self.sock.recv_into(view)

    def call(self, meta: bytes, parts: Sequence[Any], on_log: protocol.LogSink | None, spin: float) -> Response:
        try:
            protocol.send_encoded_worker_frame(self.sock, protocol.REQUEST, next(self.ids) & 0xFFFFFFFF, meta,
                                               list(parts))
        except OSError as exc:  # the worker's end is closed (it exited): the call never reached a worker
            raise _NotSent() from exc
        self.on_log = on_log
        kind, reply_meta, payload = self._receive(spin)
        if reply_meta.get("missing"):
            raise Unroutable()
        return Response(kind, payload, {})


class DirectCalls(Closeable):
    """Routes and per-thread worker connections of one cluster's client (a daemon on this machine)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.routes: dict[str, Route | None] = {}  # object name -> route (None: through the daemon)
        self._local = threading.local()
        self._all: list[_Connection] = []
        self._lock = threading.Lock()
        _everyone.add(self)

    def _forked(self) -> None:
        """In a forked child: the parent's connections are its own (frames of two processes would mix)."""
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()

    def forget(self, name: str | None = None) -> None:
        """Drop the route of ``name`` (of every object when None): the next call asks the daemon."""
        if name is None:
            self.routes.clear()
        else:
            self.routes.pop(name, None)

    def close(self) -> None:
        """Close every thread's connections and forget the routes."""
        self.routes.clear()
        with self._lock:
            connections, self._all = self._all, []
        for conn in connections:
            conn.close()

    def call(self, route: Route, method: str, stream_logs: bool, shm: bool, parts: Sequence[Any],
             on_log: protocol.LogSink | None) -> Response:
        """Send one call of ``method`` along ``route``.

        Raises:
            Unroutable: nothing ran; send the call through the daemon.
            WorkerGone: the worker died during the call.
        """
        conns: dict[str, _Connection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(route.address)
        if conn is None:
            try:
                conn = _Connection(route.address, self.token)
            except (OSError, EOFError) as exc:
                raise Unroutable() from exc
            conns[route.address] = conn
            with self._lock:
                self._all.append(conn)
        global _in_flight
        _in_flight += 1  # (a race of two threads here only costs a poll, or one not made)
        try:
            return conn.call(route.meta(method, stream_logs, shm), parts, on_log, SPIN_S if _in_flight == 1 else 0.0)
        except Unroutable:
            raise
        except _NotSent as exc:
            self._drop(conns, route.address, conn)
            raise Unroutable() from exc
        except (OSError, EOFError) as exc:
            self._drop(conns, route.address, conn)
            raise WorkerGone(route.pid) from exc
        except BaseException:  # e.g. Ctrl-C mid-call: closing the connection cancels the call in the worker
            self._drop(conns, route.address, conn)
            raise
        finally:
            _in_flight -= 1

    def _drop(self, conns: dict[str, _Connection], address: str, conn: _Connection) -> None:
        conns.pop(address, None)
        conn.close()
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)


def _after_fork() -> None:
    global _in_flight
    _in_flight = 0  # the parent's calls in flight are not this child's
    for calls in list(_everyone):
        calls._forked()


os.register_at_fork(after_in_child=_after_fork)
