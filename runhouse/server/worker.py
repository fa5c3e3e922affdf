"""The env worker process: holds an env's named objects and runs user code for the daemon.

The local worker backend (:class:`runhouse.server.channel.WorkerChannel`) starts it in the env's interpreter
as ``python -c "from runhouse.server.worker import main; main()" FD``, with one end of a Unix socket pair as
file descriptor FD. Requests arrive as frames (see :mod:`runhouse.protocol`), each naming one of the
operations of :class:`runhouse.protocol.WorkerOp`, which :class:`Worker`'s ``op_*`` methods serve; a worker
backend that runs workers elsewhere (Ray: on other nodes) serves the same operations there.
Each request runs on a thread of a pool (coroutines on one event-loop thread), so slow calls never block others.
Output written by a call that asked for ``stream_logs`` goes back to the daemon as LOG frames tagged with
that call's id: concurrent calls never mix, and nothing is written to disk per call.
"""

from __future__ import annotations

import builtins
import contextvars
import ctypes
import functools
import hashlib
import hmac
import importlib
import importlib.util
import inspect
import io
import itertools
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from runhouse import protocol, serialization
from runhouse.errors import CallCancelledError, ObjectNotFoundError
from runhouse.protocol import WorkerOp

MAX_THREADS = int(os.environ.get("RH_WORKER_THREADS", "128"))
_READ_BUFFER = 256 * 1024
# Where the daemon passes the SHA-256 (hex) of the token that direct connections must present.
DIRECT_KEY_ENV = "RH_DIRECT_KEY"
MAX_DIRECT_CONNECTIONS = 512
MAX_TOKEN_BYTES = 4096
HELLO_TIMEOUT_S = 5.0
# How long what direct calls did may wait before it goes to the daemon, in one frame with whatever follows (the
# daemon asks for it before anything reads runs): fewer wake-ups of the daemon, a shorter tail of call times.
EVENTS_DELAY_S = 0.05
# Set in the ids of direct calls: the daemon's request ids never have it.
DIRECT_RID_BIT = 0x80000000
# Copies a large reply buffer into reused shared memory and gives its file's name (None: none free).
_Lend = Callable[[memoryview], "bytes | None"]


def _read(stream: Any, n: int) -> bytearray:
    """Exactly ``n`` bytes from a buffered stream, into a new writable buffer."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        count = stream.readinto(view[got:])
        if not count:
            raise EOFError("the daemon closed the channel")
        got += count
    return buf


class _CallContext:
    """Per-call state reachable from user code through a context variable: where the call's output goes.

    Output goes out line by line, and a partial line (a progress bar's ``\r...``) as soon as user code
    flushes it.
    """

    __slots__ = ("rid", "sinks", "lend", "pending", "prefix", "line_start")

    def __init__(self, rid: int, sinks: Sequence[Callable[[bytes], None]], lend: _Lend | None = None) -> None:
        self.rid, self.sinks, self.lend = rid, sinks, lend  # lend: reused shared memory for the reply's buffers
        self.pending = ""
        self.prefix = b""  # what each line starts with: ``[index] `` while a map item runs
        self.line_start = True  # whether the output so far ends a line

    def write(self, text: str) -> None:
        self.pending += text
        cut = self.pending.rfind("\n") + 1
        if cut:
            lines, self.pending = self.pending[:cut], self.pending[cut:]
            self._emit(lines)

    def flush(self) -> None:
        if self.pending:
            text, self.pending = self.pending, ""
            self._emit(text)

    def _emit(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        if self.prefix:
            lines = data.splitlines(keepends=True)
            data = b"".join(self.prefix + line if i or self.line_start else line for i, line in enumerate(lines))
        self.line_start = data.endswith(b"\n")
        for sink in self.sinks:
            sink(data)

    def close(self) -> None:
        """End the call's output with a whole line."""
        if self.pending or not self.line_start:
            self.pending += "\n"
            self.flush()
        self.line_start = True


_current_call: contextvars.ContextVar[_CallContext | None] = contextvars.ContextVar("rh_call", default=None)


class _CallOutput(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: routes writes to the current call's log stream, if it has one."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, text: str) -> int:
        ctx = _current_call.get()
        if ctx is not None and ctx.sinks:
            ctx.write(text)
        else:
            self._real.write(text)
        return len(text)

    def flush(self) -> None:
        ctx = _current_call.get()
        if ctx is not None and ctx.sinks:
            ctx.flush()
        self._real.flush()

    def fileno(self) -> int:
        return self._real.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._real, "encoding", "utf-8")


def _initialized(name: str) -> bool:
    """Whether module ``name`` is imported and has finished running its top level."""
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _parents_first(original_import: Callable[..., Any]) -> Callable[..., Any]:
    """An ``__import__`` that imports a module's parent packages one by one, from the top, before the module.

    CPython locks a module before it imports the module's parent. So a thread importing ``numpy._core.numeric``
    (as unpickling a numpy array does) while another imports ``numpy`` (whose ``__init__`` imports that
    submodule) each hold the lock the other waits for: CPython then raises ``_DeadlockError`` or hands out a
    partially initialized module. The worker runs calls on many threads, so it takes every parent first,
    holding no lock of the chain while it waits: all threads then lock a package before its submodules.
    """

    def import_(
        name: str,
        globals: dict[str, Any] | None = None,
        locals: dict[str, Any] | None = None,
        fromlist: Sequence[str] = (),
        level: int = 0,
    ) -> Any:
        target = name
        if level:
            package = globals.get("__package__") if globals else None
            target = importlib.util.resolve_name("." * level + name, package) if package else ""
        dot = target.find(".")
        while dot != -1:
            if not _initialized(target[:dot]):
                original_import(target[:dot])
            dot = target.find(".", dot + 1)
        return original_import(name, globals, locals, fromlist, level)

    return import_


def _import_module(name: str) -> Any:
    """The module ``name``, imported through ``__import__`` (in the worker: parents first)."""
    __import__(name)
    return sys.modules[name]


def _resolve(root: Any, qualname: str) -> Any:
    obj = root
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def describe(obj: Any) -> dict[str, Any]:
    """What a client stub needs to know about a deployed object: its public methods and which are async.

    Names a class declares client-side only (:data:`runhouse.protocol.CLIENT_ONLY_ATTR`) are left out.
    """
    cls = obj if inspect.isclass(obj) else type(obj)
    client_only = _client_only_names(cls)
    methods: dict[str, bool] = {}
    for name in dir(cls):
        if name.startswith("_") and name != "__call__":
            continue
        if name in client_only:
            continue
        attr = inspect.getattr_static(cls, name, None)
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if inspect.isfunction(attr) or inspect.ismethoddescriptor(attr):
            methods[name] = inspect.iscoroutinefunction(attr)
    return {"methods": methods, "is_async": inspect.iscoroutinefunction(obj)}


def _client_only_names(cls: type) -> set[str]:
    """The names that ``cls`` and its bases declare client-side only."""
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        names.update(vars(klass).get(protocol.CLIENT_ONLY_ATTR, ()))
    return names


class Worker:
    """Serves requests from the daemon over ``sock`` until it closes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.objects: dict[str, Any] = {}
        self.callables: set[str] = set()  # names of deployed functions, classes and instances (not values)
        self.direct: _DirectServer | None = None
        self.module_hashes: dict[str, str] = {}
        self._send_lock = threading.Lock()
        self._cancel_lock = threading.Lock()
        self._stream = sock.makefile("rb", buffering=_READ_BUFFER)
        self._read_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._threads = 0
        self._executing = 0
        self._loop: Any = None  # an asyncio loop on its own thread, started by the first coroutine
        self._loop_lock = threading.Lock()
        self._running: dict[int, Any] = {}  # rid -> thread ident, or asyncio task of a coroutine
        self._raised: set[int] = set()  # calls a cancellation was raised into (their thread may still hold it)
        self._ops: dict[str, Callable[[dict, bytearray], tuple[dict | None, list]]] = {
            WorkerOp.CALL: self.op_call,
            WorkerOp.DEPLOY: self.op_deploy,
            WorkerOp.INSTANTIATE: self.op_instantiate,
            WorkerOp.GETATTR: self.op_getattr,
            WorkerOp.SETATTR: self.op_setattr,
            WorkerOp.PUT: self.op_put,
            WorkerOp.GET: self.op_get,
            WorkerOp.DELETE: self.op_delete,
            WorkerOp.FLUSH: self.op_flush,
            WorkerOp.MAP: self.op_map,
        }

    # --- transport ---------------------------------------------------------------------------------
    def send(self, kind: int, rid: int, meta: dict | None, parts: list) -> None:
        with self._send_lock:
            protocol.send_worker_frame(self.sock, kind, rid, meta, parts)

    def serve(self) -> None:
        """Serve until the daemon goes away, then exit the process.

        Leader/followers: the thread holding the read lock reads the next frame, hands the lock to a
        waiting thread and runs the request itself, so a call costs one thread wake-up, not two. A thread
        is added whenever none would be left to read (up to MAX_THREADS).
        """
        self._spawn()
        threading.Event().wait()

    def _spawn(self) -> None:
        with self._count_lock:
            if self._threads >= MAX_THREADS:
                return
            self._threads += 1
        threading.Thread(target=self._serve_frames, name="rh-call", daemon=True).start()

    def _serve_frames(self) -> None:
        try:
            while True:
                with self._read_lock:
                    kind, rid, meta_len, payload_len = protocol.WORKER_HEADER.unpack(
                        _read(self._stream, protocol.WORKER_HEADER.size)
                    )
                    meta = protocol.decode_meta(_read(self._stream, meta_len)) if meta_len else {}
                    payload = _read(self._stream, payload_len)
                    if kind == protocol.CANCEL:
                        self._cancel(rid)
                        continue
                    with self._count_lock:
                        self._executing += 1
                        starved = self._executing >= self._threads
                if starved:
                    self._spawn()
                try:
                    self._handle(rid, meta, payload)
                finally:
                    with self._count_lock:
                        self._executing -= 1
        except (EOFError, OSError):
            os._exit(0)

    def _handle(self, rid: int, meta: dict, payload: bytearray) -> None:
        sinks = [functools.partial(self._log_frame, rid)] if meta.get("stream_logs") else []
        kind, reply_meta, parts, _ = self.execute(rid, meta, payload, sinks)
        self.send(kind, rid, reply_meta, parts)

    def _log_frame(self, rid: int, data: bytes) -> None:
        self.send(protocol.LOG, rid, None, [data])

    def execute(self, rid: int, meta: dict, payload: bytearray, sinks: Sequence[Callable[[bytes], None]],
                lend: _Lend | None = None) -> tuple[int, dict | None, list, dict | None]:
        """Run one request as call ``rid`` (cancellable by that id), its output going to ``sinks`` (and the
        large buffers of its reply to shared-memory files ``lend`` gives, when it has them).

        Returns:
            ``(kind, reply meta, reply parts, error info)``; the error info (None on success) is what the
            ERROR reply carries.
        """
        ctx = _CallContext(rid, sinks, lend)
        token = _current_call.set(ctx)
        info: dict | None = None
        try:
            with self._cancel_lock:
                self._running[rid] = threading.get_ident()
            try:
                op = self._ops.get(meta.get("op", ""))
                if op is None:
                    raise ValueError(f"unknown worker op {meta.get('op')!r}")
                kind, reply_meta, parts = protocol.RESULT, *op(meta, payload)
            except BaseException as exc:  # noqa: BLE001 - every failure of user code goes back to the caller
                info = serialization.pack_exception(exc)
                kind, reply_meta, parts = protocol.ERROR, None, [protocol.encode_meta(info)]
            self._finish(rid)
        except CallCancelledError as exc:  # a cancellation that landed after the call itself had finished
            self._finish(rid)
            info = serialization.pack_exception(exc)
            kind, reply_meta, parts = protocol.ERROR, None, [protocol.encode_meta(info)]
        ctx.close()
        _current_call.reset(token)
        return kind, reply_meta, parts, info

    def _finish(self, rid: int) -> None:
        """Mark the call done; after this no cancellation can reach this thread (a pending one is cleared)."""
        with self._cancel_lock:
            self._running.pop(rid, None)
            if rid in self._raised:
                self._raised.discard(rid)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)

    def _cancel(self, rid: int) -> None:
        with self._cancel_lock:
            target = self._running.get(rid)
            if target is None:
                return
            if not isinstance(target, int):  # an asyncio task
                self._loop.call_soon_threadsafe(target.cancel)
            else:
                exc = ctypes.py_object(CallCancelledError)
                self._raised.add(rid)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), exc)

    # --- helpers -----------------------------------------------------------------------------------
    def _object(self, name: str) -> Any:
        try:
            return self.objects[name]
        except KeyError:
            raise ObjectNotFoundError(f"no object named {name!r} in this env") from None

    def _run_coroutine(self, rid: int, coro: Any) -> Any:
        import asyncio  # only workers that run coroutines pay for importing asyncio

        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="rh-async", daemon=True).start()
        ctx = _current_call.get()

        async def runner() -> Any:
            _current_call.set(ctx)
            with self._cancel_lock:
                self._running[rid] = asyncio.current_task()
            return await coro

        future = asyncio.run_coroutine_threadsafe(runner(), self._loop)
        try:
            return future.result()
        except asyncio.CancelledError:
            raise CallCancelledError("the call was cancelled") from None

    def _load_args(self, meta: dict, payload: bytearray | memoryview) -> Any:
        if "refs" not in meta:
            return serialization.deserialize(payload)
        fetched = meta["refs"]

        def persistent_load(pid: Any) -> Any:
            _, key = pid
            if key in self.objects:
                return self.objects[key]
            if key in fetched:
                return serialization.deserialize(fetched[key])
            raise ObjectNotFoundError(f"ref {key!r} is not on this cluster (deleted, or lost in a restart)")

        return serialization.deserialize(payload, persistent_load)

    def _reply(self, value: Any, meta: dict) -> tuple[dict | None, list]:
        store_as = meta.get("store_as")
        if store_as:
            self.objects[store_as] = value
            return {"stored": store_as}, []
        if meta.get("json"):
            return None, [json.dumps(value, default=repr).encode()]
        ctx = _current_call.get()
        assert ctx is not None
        owner = serialization.request_shm_owner(os.getpid(), ctx.rid)  # the daemon frees them if this worker dies
        return None, serialization.serialize(value, shm=bool(meta.get("shm")), shm_owner=owner, shm_lend=ctx.lend)

    # --- ops ---------------------------------------------------------------------------------------
    def op_call(self, meta: dict, payload: bytearray | memoryview) -> tuple[dict | None, list]:
        target = self._object(meta["name"])
        method = meta.get("method") or "__call__"
        if method in ("call", "__call__") and not hasattr(target, method):
            method = "__call__"
        try:
            fn = getattr(target, method)
        except AttributeError:
            raise ObjectNotFoundError(f"{meta['name']!r} has no method {method!r}") from None
        args, kwargs = self._load_args(meta, payload) if payload else ((), {})
        result = fn(*args, **kwargs)
        if inspect.iscoroutine(result):
            result = self._run_coroutine(_current_call.get().rid, result)  # type: ignore[union-attr]
        return self._reply(result, meta)

    def op_map(self, meta: dict, payload: bytearray) -> tuple[dict | None, list]:
        """Run a batch of a map's items one after another: ``sizes`` cut the payload into the items' arguments
        and ``indices`` number them (each line of an item's output starts with ``[index]``). The reply's parts are
        the items' answers back to back; its meta has their ``kinds`` (RESULT or ERROR) and ``sizes``."""
        ctx = _current_call.get()
        assert ctx is not None
        call = {"name": meta["name"], "method": meta["method"], "shm": meta.get("shm")}
        if "refs" in meta:
            call["refs"] = meta["refs"]
        view = memoryview(payload)
        kinds: list[int] = []
        sizes: list[int] = []
        parts: list = []
        offset = 0
        for index, size in zip(meta["indices"], meta["sizes"], strict=True):
            ctx.prefix = f"[{index}] ".encode()
            try:
                item = self.op_call(call, view[offset : offset + size])[1]
                kind = protocol.RESULT
            except CallCancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - an item's failure is its answer
                item, kind = [protocol.encode_meta(serialization.pack_exception(exc))], protocol.ERROR
            ctx.close()
            offset += size
            kinds.append(kind)
            sizes.append(serialization.serialized_size(item))
            parts += item
        ctx.prefix = b""
        return {"kinds": kinds, "sizes": sizes}, parts

    def op_deploy(self, meta: dict, payload: bytearray) -> tuple[dict | None, list]:
        spec = meta["spec"]
        if payload:
            obj = serialization.load_code(payload, spec, repr(meta["name"]))  # notebook/__main__ code, by value
        else:
            root = spec.get("root")
            if root and root not in sys.path:
                sys.path.insert(0, root)
            module_name, code_hash = spec["module"], spec.get("code_hash")
            known = self.module_hashes.get(module_name)
            module = _import_module(module_name)
            if known is not None and known != code_hash:
                module = importlib.reload(module)
            self.module_hashes[module_name] = code_hash
            obj = _resolve(module, spec["qualname"])
        self.objects[meta["name"]] = obj
        self.callables.add(meta["name"])
        return {"info": describe(obj)}, []

    def op_instantiate(self, meta: dict, payload: bytearray) -> tuple[dict | None, list]:
        cls = self._object(meta["class_name"])
        args, kwargs = self._load_args(meta, payload) if payload else ((), {})
        instance = cls(*args, **kwargs)
        self.objects[meta["name"]] = instance
        self.callables.add(meta["name"])
        return {"info": describe(instance)}, []

    def op_getattr(self, meta: dict, payload: bytearray) -> tuple[dict | None, list]:
        target = self._object(meta["name"])
        try:
            value = getattr(target, meta["attr"])
        except AttributeError:
            raise ObjectNotFoundError(f"{meta['name']!r} has no attribute {meta['attr']!r}") from None
        return self._reply(value, meta)

    def op_setattr(self, meta: dict, payload: bytearray) -> tuple[dict | None, list]:
        setattr(self._object(meta["name"]), meta["attr"], self._load_args(meta, payload))
        return None, []

    def op_put(self, meta: dict, payload: bytearray) -> tuple[dict | None, list]:
        self.objects[meta["key"]] = self._load_args(meta, payload)
        self.callables.discard(meta["key"])
        return None, []

    def op_get(self, meta: dict, payload: bytearray) -> tuple[dict | None, list]:
        return self._reply(self._object(meta["key"]), meta)

    def op_delete(self, meta: dict, payload: bytearray) -> tuple[dict | None, list]:
        for key in meta["keys"]:
            self.objects.pop(key, None)
            self.callables.discard(key)
        return None, []

    def op_flush(self, meta: dict, payload: bytearray) -> tuple[dict | None, list]:
        """Send what direct calls did so far to the daemon (before this reply, on the same channel)."""
        if self.direct is not None:
            self.direct.flush()
        return None, []


class _DirectServer:
    """Calls from clients on this machine straight to this worker, beside the daemon's channel.

    The daemon opens the listener (an abstract Unix socket) and tells its clients where it is
    (``Op.ROUTE``); it stays the control plane: deploys, envs, refs, timeouts and everything else go through
    it. A connection's first frame is HELLO carrying the daemon's token (checked against its SHA-256, which
    the daemon passed in :data:`DIRECT_KEY_ENV`; nothing of a connection is read before it passes). Then
    each REQUEST is a call of a deployed function or method, run on the connection's own thread and answered
    on the connection: RESULT or ERROR after any LOG frames, as through the daemon. A name that is not a
    deployed function, class or instance here is answered ``{"missing": True}`` without running anything,
    and the client asks the daemon instead. A client that goes away mid-call cancels it (the connection is
    watched while the call runs).

    What direct calls do is reported to the daemon as EVENTS frames, batched every
    :data:`EVENTS_DELAY_S` (never waited for on the call path): a run started, its output, how it ended, a
    cancelled call; the daemon records runs, counts calls and keeps the cluster awake from them, and asks for
    a flush (``WorkerOp.FLUSH``) before it answers anything that reads them.
    """

    def __init__(self, worker: Worker, listener: socket.socket, key_digest: bytes) -> None:
        self.worker, self.listener, self.key_digest = worker, listener, key_digest
        self._ids = itertools.count(1)
        self._connections = 0
        self._count_lock = threading.Lock()
        self._events: list[tuple] = []
        self._events_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._flush_wanted = threading.Event()
        self._watch = select.epoll()
        self._watched: dict[int, tuple[int, socket.socket]] = {}  # connection fd -> the call it runs, and it
        self._watch_lock = threading.Lock()
        self._open_fds: set[int] = set()
        self.pool = serialization.ShmPool(str(os.getpid()))
        os.register_at_fork(after_in_child=self._in_forked_child)

    def _in_forked_child(self) -> None:
        """A fork of the worker must not keep a client's connection open after the worker died."""
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in list(self._open_fds):
            os.dup2(devnull, fd, inheritable=False)
        os.close(devnull)

    def start(self) -> None:
        for target, name in ((self._accept, "rh-direct"), (self._flusher, "rh-events"), (self._watcher, "rh-watch")):
            threading.Thread(target=target, name=name, daemon=True).start()

    # --- connections -------------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._count_lock:
                full = self._connections >= MAX_DIRECT_CONNECTIONS
                self._connections += not full
            if full:
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="rh-direct-call", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        fd = conn.fileno()
        lent: list = []  # the pool's files holding the last reply's buffers, until the client has them
        self._open_fds.add(fd)
        try:
            conn.settimeout(HELLO_TIMEOUT_S)  # a stranger that never says hello is dropped
            stream = conn.makefile("rb", buffering=_READ_BUFFER)
            kind, _, meta_len, size = protocol.WORKER_HEADER.unpack(_read(stream, protocol.WORKER_HEADER.size))
            if kind != protocol.HELLO or meta_len or size > MAX_TOKEN_BYTES:
                return
            digest = hashlib.sha256(_read(stream, size)).digest()
            if not hmac.compare_digest(digest, self.key_digest):
                return
            conn.settimeout(None)
            send = _Sender(conn)
            send(protocol.RESULT, 0, None, [])
            lend = functools.partial(self.pool.lend, lent=lent)
            self._watch.register(fd, select.EPOLLRDHUP | select.EPOLLONESHOT)  # the client going away, once
            while True:
                kind, rid, meta_len, size = protocol.WORKER_HEADER.unpack(
                    _read(stream, protocol.WORKER_HEADER.size)
                )
                self.pool.give_back(lent)  # the client read the last reply (and locked its buffers) before this
                meta = protocol.decode_meta(_read(stream, meta_len)) if meta_len else {}
                payload = _read(stream, size)
                if kind != protocol.REQUEST:
                    return
                self._call(send, conn, rid, meta, payload, lend)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            self.pool.give_back(lent)
            self._open_fds.discard(fd)
            conn.close()
            with self._count_lock:
                self._connections -= 1

    def _call(self, send: _Sender, conn: socket.socket, rid: int, meta: dict, payload: bytearray,
              lend: _Lend) -> None:
        name = meta.get("name")
        if name not in self.worker.callables:
            send(protocol.RESULT, rid, {"missing": True}, [])
            return
        drid = (next(self._ids) & 0x7FFFFFFF) | DIRECT_RID_BIT  # never one of the daemon's request ids
        method = meta.get("method") or protocol.CALL_METHOD
        record = functools.partial(self._output, drid)
        sinks = [functools.partial(send.log, rid), record] if meta.get("stream_logs") else [record]
        self.event(("start", drid, name, method, time.time(), len(payload)))
        fd = conn.fileno()
        with self._watch_lock:
            self._watched[fd] = (drid, conn)
        try:
            call = {"op": WorkerOp.CALL, "name": name, "method": method, "shm": meta.get("shm")}
            kind, reply_meta, parts, info = self.worker.execute(drid, call, payload, sinks, lend)
        finally:
            with self._watch_lock:
                self._watched.pop(fd, None)
        self.event(("end", drid, info, time.time(), serialization.serialized_size(parts)))
        send(kind, rid, reply_meta, parts)

    def _watcher(self) -> None:
        """Cancel the call of a connection whose client went away."""
        while True:
            for fd, _ in self._watch.poll():
                with self._watch_lock:
                    running = self._watched.get(fd)
                    if running is None or not _hung_up(running[1]):  # (a later connection on a reused fd)
                        continue
                    drid = self._watched.pop(fd)[0]
                self.worker._cancel(drid)
                self.event(("cancelled", drid))
                self.flush()

    # --- events ------------------------------------------------------------------------------------
    def _output(self, drid: int, data: bytes) -> None:
        """Output goes to the daemon at once (with the run's start before it): it is the last word of a call
        that crashes the worker."""
        self.event(("out", drid, data))
        self.flush()

    def event(self, event: tuple) -> None:
        with self._events_lock:
            self._events.append(event)
        if not self._flush_wanted.is_set():
            self._flush_wanted.set()

    def _flusher(self) -> None:
        """Send the events every EVENTS_DELAY_S while there are any; drop the pool's idle files now and then."""
        while True:
            if self._flush_wanted.wait(serialization.SHM_POOL_IDLE_S):
                time.sleep(EVENTS_DELAY_S)
                self._flush_wanted.clear()
                self.flush()
            self.pool.trim()

    def flush(self) -> None:
        """Send the events so far to the daemon now."""
        with self._flush_lock:
            with self._events_lock:
                batch, self._events = self._events, []
            if batch:
                self.worker.send(protocol.EVENTS, 0, {"events": batch}, [])


def _hung_up(conn: socket.socket) -> bool:
    """Whether the client of a connection running a call closed it (it sends nothing while its call runs)."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class _Sender:
    """Writes frames to one direct connection."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.lock = threading.Lock()  # user code may print from threads of its own while the reply goes out

    def __call__(self, kind: int, rid: int, meta: dict | None, parts: list) -> None:
        with self.lock:
            protocol.send_worker_frame(self.conn, kind, rid, meta, parts)

    def log(self, rid: int, data: bytes) -> None:
        try:
            self(protocol.LOG, rid, None, [data])
        except OSError:  # the client went away; the call is being cancelled
            pass


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _keep_channel_private(*socks: socket.socket) -> None:
    """Keep the channel (and the direct-call listener) in this process only, so that they close exactly when
    this process dies.

    Programs that user code runs do not inherit them, and a fork of the worker (``os.fork``, multiprocessing)
    gets /dev/null in their place, and no call context: else the daemon would not see a dead worker while
    such processes live, a client could connect to a listener nobody serves, and a fork could write frames
    into the channel.
    """
    for sock in socks:
        sock.set_inheritable(False)

    def in_forked_child() -> None:
        devnull = os.open(os.devnull, os.O_RDWR)
        for sock in socks:
            os.dup2(devnull, sock.fileno(), inheritable=False)
        os.close(devnull)
        _current_call.set(None)

    os.register_at_fork(after_in_child=in_forked_child)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    listener = socket.socket(fileno=int(sys.argv[2])) if len(sys.argv) > 2 else None
    key = os.environ.pop(DIRECT_KEY_ENV, "")
    _keep_channel_private(sock, *([listener] if listener else []))
    _die_with_parent()
    builtins.__import__ = _parents_first(builtins.__import__)
    sys.stdout = _CallOutput(sys.stdout)
    sys.stderr = _CallOutput(sys.stderr)
    worker = Worker(sock)
    if listener is not None and key:
        worker.direct = _DirectServer(worker, listener, bytes.fromhex(key))
        worker.direct.start()
    worker.serve()


if __name__ == "__main__":
    main()
