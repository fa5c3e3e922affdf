"""The daemon's HTTP API: a thin ASGI layer over :class:`runhouse.server.runtime.Runtime`.

The routes, the framing and the error envelope are :mod:`runhouse.protocol`'s. Our client sends
``Content-Type: application/x-runhouse`` with options as JSON in the ``X-Rh-Meta`` header
and a serialized payload as the body, and reads framed responses (logs streamed first, then one RESULT or
ERROR frame). Any other client sends JSON (``{"args": [...], "kwargs": {...}}``) and gets JSON back.
The ASGI callable is written by hand rather than on a framework's router: the call path is the hot path,
and each framework layer measurably adds to the per-call latency. Workers are not its concern: a worker's
:class:`~runhouse.server.backend.Reply` is passed through as it came, whichever backend ran the call.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from runhouse import protocol, serialization
from runhouse.errors import (
    BY_NAME,
    AuthenticationError,
    BadRequestError,
    DaemonError,
    ObjectNotFoundError,
    RunhouseError,
    SerializationError,
)
from runhouse.protocol import DEFAULT_ENV, Op
from runhouse.server.backend import Reply
from runhouse.server.envs import EnvSpec
from runhouse.server.runtime import Runtime
from runhouse.version import __version__, build_id

_JSON = b"application/json"
# A call still running after this long starts watching for its client going away.
_WATCH_AFTER_S = 0.02
_CT = protocol.CONTENT_TYPE.encode()


class ClientGone(Exception):
    """The HTTP client disconnected before the request finished."""


class _Request:
    __slots__ = ("path", "meta", "body", "json_mode")

    def __init__(self, path: str, meta: dict[str, Any], body: memoryview, json_mode: bool) -> None:
        self.path, self.meta, self.body, self.json_mode = path, meta, body, json_mode

    def arg(self, key: str, kind: type | tuple[type, ...] = str, default: Any = ...) -> Any:
        if key not in self.meta:
            if default is ...:
                raise BadRequestError(f"missing field {key!r}")
            return default
        value = self.meta[key]
        if value is not None and not isinstance(value, kind):
            raise BadRequestError(f"field {key!r} has the wrong type ({type(value).__name__})")
        return value

    def payload(self) -> memoryview:
        """The body as a serialized value, its framing checked (an empty body means no value)."""
        if self.body.nbytes:
            try:
                serialization.split(self.body)
            except SerializationError as exc:
                raise BadRequestError(f"malformed body: {exc}") from None
        return self.body

    def call_payload(self) -> memoryview:
        """The serialized (args, kwargs) of a call, converted from JSON for non-runhouse clients."""
        if not self.json_mode:
            return self.payload()
        if not self.body.nbytes:
            args, kwargs = [], {}
        else:
            try:
                data = json.loads(bytes(self.body))
            except ValueError as exc:
                raise BadRequestError(f"body is not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise BadRequestError('body must be a JSON object like {"args": [1, 2], "kwargs": {}}')
            args, kwargs = data.get("args", []), data.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise BadRequestError('"args" must be a JSON list and "kwargs" a JSON object')
        return memoryview(serialization.join(serialization.serialize((tuple(args), kwargs))))


class _Response:
    """One HTTP response: a single frame, or log frames streamed as they come followed by the last frame."""

    __slots__ = ("send", "json_mode", "started", "logs", "flusher")

    def __init__(self, send: Callable[[dict], Awaitable[None]], json_mode: bool) -> None:
        self.send, self.json_mode = send, json_mode
        self.started = False
        self.logs: deque[bytes] = deque()
        self.flusher: asyncio.Task | None = None

    def log(self, data: bytes) -> None:
        self.logs.append(data)
        if self.flusher is None:
            self.flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self.logs:
            data = self.logs.popleft()
            if not self.started:
                self.started = True
                await self.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", _CT)]})
            head = protocol.http_frame_head(protocol.LOG, len(data))
            await self.send({"type": "http.response.body", "body": head + data, "more_body": True})
        self.flusher = None

    async def frame(self, kind: int, parts: list, headers: list | None = None) -> None:
        if self.flusher is not None:
            await self.flusher
        size = serialization.serialized_size(parts)
        head = protocol.http_frame_head(kind, size)
        if not self.started:
            self.started = True
            hdrs = [(b"content-type", _CT), (b"content-length", str(len(head) + size).encode()), *(headers or [])]
            await self.send({"type": "http.response.start", "status": 200, "headers": hdrs})
        if size < protocol.SMALL_FRAME_BYTES:
            await self.send({"type": "http.response.body", "body": b"".join([head, *parts])})
            return
        await self.send({"type": "http.response.body", "body": head, "more_body": True})
        for part in parts:
            await self.send({"type": "http.response.body", "body": part, "more_body": True})
        await self.send({"type": "http.response.body", "body": b""})

    async def json(self, status: int, data: Any) -> None:
        body = json.dumps(data, default=repr).encode()
        await self.send({"type": "http.response.start", "status": status,
                         "headers": [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body})
        self.started = True

    async def value(self, data: Any, headers: list | None = None) -> None:
        """Answer with a plain value the daemon produced itself."""
        if self.json_mode:
            await self.json(200, {"result": data})
        else:
            await self.frame(protocol.RESULT, serialization.serialize(data), headers)

    async def reply(self, reply: Reply) -> None:
        """Answer with a worker's reply: its result, or the exception user code raised."""
        if reply.kind == protocol.ERROR:
            if self.json_mode:
                info = protocol.decode_meta(reply.payload)
                status = getattr(BY_NAME.get(info["type"]), "status", 422)
                await self.json(status, protocol.error_envelope(info["type"], info["message"],
                                                                traceback=info["traceback"]))
            else:
                await self.frame(protocol.ERROR, [reply.payload])
        elif self.json_mode:
            body = bytes(reply.payload) if reply.payload.nbytes else b"null"
            await self.json(200, {"result": json.loads(body)})
        else:
            await self.frame(protocol.RESULT, [reply.payload])

    async def error(self, exc: RunhouseError | Exception, status: int) -> None:
        envelope = protocol.error_envelope(type(exc).__name__, str(exc), protocol.exception_details(exc))
        if not self.started:
            await self.json(status, envelope)
        else:  # logs were already streamed with a 200: report in-band
            info = {**envelope["error"], "traceback": "", "pickled": None}
            await self.frame(protocol.ERROR, [protocol.encode_meta(info)])


class App:
    """The ASGI application of the daemon."""

    def __init__(self, runtime: Runtime, token: str) -> None:
        self.runtime = runtime
        self._auth = f"Bearer {token}".encode()
        self._health = {"status": "ok", "pid": os.getpid(), "version": __version__, "build": build_id()}
        self._routes: dict[str, Callable[[_Request, _Response], Awaitable[None]]] = {
            Op.ENV: self._env,
            Op.DEPLOY: self._deploy,
            Op.INSTANTIATE: self._instantiate,
            Op.MAP: self._map,
            Op.PUT: self._put,
            Op.GET: self._get,
            Op.DELETE: self._delete,
            Op.KEYS: self._keys,
            Op.GETATTR: self._getattr,
            Op.SETATTR: self._setattr,
            Op.RUN: self._run,
            Op.STATUS: self._status,
        }

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        json_mode = True
        response = _Response(send, json_mode)
        try:
            if path == protocol.HEALTH_PATH and scope["method"] == "GET":
                await response.json(200, self._health)
                return
            headers = dict(scope["headers"])
            if not hmac.compare_digest(headers.get(b"authorization", b""), self._auth):
                await response.error(AuthenticationError("missing or wrong token: send 'Authorization: Bearer "
                                                         "<token>' (`runhouse token` prints it)"), 401)
                return
            response.json_mode = json_mode = headers.get(b"content-type", b"") != _CT
            if scope["method"] != "POST":
                raise BadRequestError(f"use POST for {path} (only GET /health exists)")
            meta = _parse_meta(headers.get(b"x-rh-meta"))
            body = await _read_body(receive, headers.get(b"content-length"))
            request = _Request(path, meta, body, json_mode)
            if path.startswith(protocol.CONTROL_PREFIX):
                route = self._routes.get(path[len(protocol.CONTROL_PREFIX):])
                if route is None:
                    raise ObjectNotFoundError(f"no such endpoint {path}")
                await route(request, response)
            else:
                await self._call(request, response, receive)
        except ClientGone:
            return
        except DaemonError as exc:
            await response.error(exc, exc.status)
        except RunhouseError as exc:
            await response.error(exc, getattr(exc, "status", 400))
        except Exception as exc:  # a daemon bug: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            await response.error(exc, 500)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.runtime.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- calls ---------------------------------------------------------------------------------------
    async def _call(self, request: _Request, response: _Response, receive: Callable) -> None:
        parts = request.path.strip("/").split("/")
        if len(parts) != 2 or not all(parts):
            raise ObjectNotFoundError(f"no such endpoint {request.path}; call /<name>/<method>")
        name, method = parts
        meta = request.meta
        timeout = request.arg("timeout", (int, float), None)
        call = self.runtime.call(
            name,
            method,
            request.call_payload(),
            stream_logs=bool(meta.get("stream_logs")) and not request.json_mode,
            remote=bool(meta.get("remote")),
            refs=request.arg("refs", list, ()),
            timeout=timeout,
            enqueue=bool(meta.get("enqueue")),
            json_result=request.json_mode,
            shm=bool(meta.get("shm")) and not request.json_mode,
            on_log=response.log,
        )
        reply = await _cancel_on_disconnect(call, receive)
        if "stored" in reply.meta:
            await response.value({"ref": reply.meta["stored"]})
        else:
            await response.reply(reply)

    async def _map(self, request: _Request, response: _Response) -> None:
        if request.json_mode:
            raise BadRequestError("map needs the runhouse client (serialized items)")
        sizes = request.arg("sizes", list)
        if sum(sizes) != request.body.nbytes:
            raise BadRequestError("item sizes do not add up to the body length")
        items, offset = [], 0
        for size in sizes:
            item = request.body[offset : offset + size]
            _Request(request.path, {}, item, False).payload()
            items.append(item)
            offset += size

        def on_log(index: int, data: bytes) -> None:
            response.log(b"".join(f"[{index}] ".encode() + line for line in data.splitlines(keepends=True)))

        results = await self.runtime.map(
            request.arg("name"),
            request.arg("method"),
            items,
            stream_logs=bool(request.meta.get("stream_logs")),
            refs=request.arg("refs", list, ()),
            shm=bool(request.meta.get("shm")),
            on_log=on_log,
        )
        frames = []
        for result in results:
            if isinstance(result, Reply):
                frames.append((result.kind, result.payload))
            else:
                info = serialization.pack_exception(result)
                frames.append((protocol.ERROR, memoryview(protocol.encode_meta(info))))
        # One RESULT frame whose payload is the item frames back to back.
        parts: list = []
        for kind, payload in frames:
            parts += [protocol.http_frame_head(kind, payload.nbytes), payload]
        await response.frame(protocol.RESULT, parts)

    # --- control -------------------------------------------------------------------------------------
    async def _env(self, request: _Request, response: _Response) -> None:
        data = request.arg("env", dict)
        try:
            spec = EnvSpec.from_dict(data)
        except (KeyError, TypeError) as exc:
            raise BadRequestError(f"invalid env spec: {exc}") from None
        result = await self.runtime.create_env(spec, lambda line: response.log((line + "\n").encode()))
        await response.value(result)

    async def _deploy(self, request: _Request, response: _Response) -> None:
        reply = await self.runtime.deploy(
            request.arg("name"),
            request.arg("env", str, DEFAULT_ENV) or DEFAULT_ENV,
            request.arg("kind"),
            request.arg("spec", dict),
            bytes(request.body),
            request.arg("version"),
        )
        await (response.value(reply.meta["info"]) if reply.kind == protocol.RESULT else response.reply(reply))

    async def _instantiate(self, request: _Request, response: _Response) -> None:
        reply = await self.runtime.instantiate(
            request.arg("name"), request.arg("class_name"), request.payload(), request.arg("refs", list, ())
        )
        await (response.value(reply.meta["info"]) if reply.kind == protocol.RESULT else response.reply(reply))

    async def _put(self, request: _Request, response: _Response) -> None:
        if request.json_mode:  # the JSON document itself is the value
            try:
                value = json.loads(bytes(request.body))
            except ValueError as exc:
                raise BadRequestError(f"body is not valid JSON: {exc}") from None
            payload = memoryview(serialization.join(serialization.serialize(value)))
        else:
            payload = request.payload()
        await self.runtime.put(request.arg("key"), request.arg("env", str, DEFAULT_ENV) or DEFAULT_ENV, payload)
        await response.value(None)

    async def _get(self, request: _Request, response: _Response) -> None:
        entry, reply = await self.runtime.get(request.arg("key"), shm=bool(request.meta.get("shm")))
        if reply is None:
            handle = {"kind": entry.kind, "env": entry.env, "info": entry.info}
            await response.value(handle, [(protocol.KIND_HEADER.encode(), protocol.HANDLE_KIND.encode())])
        elif request.json_mode:
            raise BadRequestError("stored values are serialized Python objects; use the runhouse client")
        else:
            await response.reply(reply)

    async def _delete(self, request: _Request, response: _Response) -> None:
        await response.value(await self.runtime.delete(request.arg("keys", list)))

    async def _keys(self, request: _Request, response: _Response) -> None:
        await response.value(self.runtime.keys(request.arg("env", str, None)))

    async def _getattr(self, request: _Request, response: _Response) -> None:
        shm = bool(request.meta.get("shm"))
        await response.reply(await self.runtime.getattr(request.arg("name"), request.arg("attr"), shm=shm))

    async def _setattr(self, request: _Request, response: _Response) -> None:
        await response.reply(await self.runtime.setattr(request.arg("name"), request.arg("attr"), request.payload()))

    async def _run(self, request: _Request, response: _Response) -> None:
        cmds = request.arg("cmds", list)
        if not all(isinstance(c, str) for c in cmds):
            raise BadRequestError("'cmds' must be a list of strings")
        on_log = response.log if request.meta.get("stream_logs") and not request.json_mode else None
        results = await self.runtime.run(cmds, request.arg("env", str, None), on_log, bool(request.meta.get("python")))
        await response.value(results)

    async def _status(self, request: _Request, response: _Response) -> None:
        await response.value(self.runtime.status())


def _parse_meta(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise BadRequestError(f"X-Rh-Meta header is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise BadRequestError("X-Rh-Meta header must be a JSON object")
    return meta


async def _read_body(receive: Callable, length_header: bytes | None) -> memoryview:
    """Read the whole body into one writable buffer (sized up front when Content-Length is known)."""
    try:
        expected = int(length_header) if length_header else None
    except ValueError:
        raise BadRequestError("Content-Length is not a number") from None
    if expected is not None:
        buf = bytearray(expected)
        pos = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if pos + len(chunk) > expected:
                raise BadRequestError("body is longer than Content-Length")
            buf[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
            if not message.get("more_body"):
                return memoryview(buf)[:pos]
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunks += message.get("body", b"")
        if not message.get("more_body"):
            return memoryview(chunks)


async def _cancel_on_disconnect(call: Awaitable[Reply], receive: Callable) -> Reply:
    """Await ``call``; if the client goes away first (Ctrl-C), cancel it on the worker.

    Calls that finish within ``_WATCH_AFTER_S`` never pay for watching; longer ones get a watcher task that
    cancels this handler when the disconnect arrives (it is seen at once even if it came earlier).
    """
    loop = asyncio.get_running_loop()
    handler = asyncio.current_task()
    assert handler is not None
    gone = False
    watcher: asyncio.Future | None = None

    def on_message(done: asyncio.Future) -> None:
        nonlocal gone
        if not done.cancelled() and done.exception() is None and done.result()["type"] == "http.disconnect":
            gone = True
            handler.cancel()

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(on_message)

    timer = loop.call_later(_WATCH_AFTER_S, watch)
    try:
        return await call
    except asyncio.CancelledError:
        if gone:
            raise ClientGone() from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.remove_done_callback(on_message)
            watcher.cancel()
