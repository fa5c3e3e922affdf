"""The daemon's HTTP API: a thin ASGI layer over :class:`runhouse.server.runtime.Runtime`.

The routes, the framing and the error envelope are :mod:`runhouse.protocol`'s. Our client sends
``Content-Type: application/x-runhouse`` with options as JSON in the ``X-Rh-Meta`` header
and a serialized payload as the body, and reads framed responses (logs streamed first, then one RESULT or
ERROR frame). Any other client sends JSON (``{"args": [...], "kwargs": {...}}``) and gets JSON back.
The ASGI callable is written by hand rather than on a framework's router: the call path is the hot path,
and each framework layer measurably adds to the per-call latency. Workers are not its concern: a worker's
:class:`~runhouse.server.backend.Reply` is passed through as it came, whichever backend ran the call.

Input is checked before anything runs: every route's options (name, JSON type, range, default) are one
table, :data:`_CALL_OPTIONS` and the options column of ``App._routes``; an unknown, missing or ill-typed
option, malformed or too deeply nested JSON, or a body over ``max_body_bytes`` (checked against
``Content-Length`` before reading it) is a 4xx naming the problem. Answers to JSON clients are always
valid JSON: a result's NaN and infinities, which JSON cannot represent, are sent as ``null``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
import traceback
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from runhouse import protocol, serialization
from runhouse.errors import (
    BY_NAME,
    AuthenticationError,
    BadRequestError,
    DaemonError,
    ObjectNotFoundError,
    PayloadTooLargeError,
    RunhouseError,
    SerializationError,
)
from runhouse.protocol import DEFAULT_ENV, Op
from runhouse.server.backend import Reply
from runhouse.server.den_auth import DAEMON_CALLER, DenAuth, DenAuthSettings
from runhouse.server.direct import DirectHub
from runhouse.server.envs import EnvSpec, PackageInstall
from runhouse.server.metrics import CONTENT_TYPE
from runhouse.server.runtime import Runtime
from runhouse.version import __version__, build_id

# The largest request body accepted unless the daemon is started with another cap.
DEFAULT_MAX_BODY_BYTES = 8 * 1024**3
# The environment variable (read where the daemon starts) that sets the cap.
MAX_BODY_ENV = "RH_MAX_BODY_BYTES"
_JSON = b"application/json"
# A call still running after this long starts watching for its client going away.
_WATCH_AFTER_S = 0.02
_CT = protocol.CONTENT_TYPE.encode()
_CLOSE = [(b"connection", b"close")]
_METRICS_TYPE = CONTENT_TYPE.encode()


# What a Den token's user needs on the cluster for each control operation (calls need read); any other
# operation needs write, and Op.DEN_AUTH the daemon's own token.
_READ_OPS = frozenset({Op.GET, Op.GETATTR, Op.READY, Op.KEYS, Op.STATUS, Op.MAP, Op.RUNS, Op.LOGS, Op.ROUTE})
_READ_PATHS = frozenset(protocol.control_path(op) for op in _READ_OPS)
_OWNER_PATH = protocol.control_path(Op.DEN_AUTH)


def _access_needed(path: str) -> str:
    """``read``, ``write`` or ``owner`` (the daemon's own token only): what a request to ``path`` needs."""
    if not path.startswith(protocol.CONTROL_PREFIX) or path in _READ_PATHS:
        return "read"
    return "owner" if path == _OWNER_PATH else "write"


class ClientGone(Exception):
    """The HTTP client disconnected before the request finished."""


# --- options (the X-Rh-Meta header) ----------------------------------------------------------------------
class _Kind(NamedTuple):
    """What an option's value must be: ``expected`` says it in an error message, ``fits`` checks it."""

    expected: str
    fits: Callable[[Any], bool]


def _is_seconds(value: Any, zero_allowed: bool) -> bool:
    """A JSON number of seconds up to ``MAX_TIMEOUT_S`` (NaN fails every comparison, infinity the last)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (value >= 0 if zero_allowed else value > 0) and value <= protocol.MAX_TIMEOUT_S


def _is_texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


_TEXT = _Kind("a string", lambda v: isinstance(v, str))
_FLAG = _Kind("true or false", lambda v: isinstance(v, bool))
_OBJECT = _Kind("a JSON object", lambda v: isinstance(v, dict))
_TEXTS = _Kind("a list of strings", _is_texts)
_COMMANDS = _Kind("a list of strings without NUL characters", lambda v: _is_texts(v) and not any("\0" in c for c in v))
_OBJECTS = _Kind("a list of JSON objects", lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v))
_SIZES = _Kind(
    "a list of byte counts (integers >= 0)",
    lambda v: isinstance(v, list) and all(type(n) is int and n >= 0 for n in v),
)
_TIMEOUT = _Kind(
    f"a number of seconds, more than 0 and at most {protocol.MAX_TIMEOUT_S:.0f}",
    lambda v: _is_seconds(v, zero_allowed=False),
)
_WAIT = _Kind(
    f"a number of seconds from 0 to {protocol.MAX_TIMEOUT_S:.0f} (omit it to wait until the value exists)",
    lambda v: _is_seconds(v, zero_allowed=True),
)
_MINUTES = _Kind(
    "a number of minutes (negative: never), at most a year",
    lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and -1e9 < v <= protocol.MAX_TIMEOUT_S / 60,
)
_RUN_NAME = _Kind(
    f"a string of 1-{protocol.MAX_OBJECT_NAME_LENGTH} characters without control characters",
    lambda v: isinstance(v, str) and 0 < len(v) <= protocol.MAX_OBJECT_NAME_LENGTH
    and not any(ord(c) < 32 or c == "\x7f" for c in v),
)
_PID = _Kind("a process id (an integer > 0)", lambda v: type(v) is int and v > 0)
_LIMIT = _Kind("a whole number from 1 to 100000", lambda v: type(v) is int and 1 <= v <= 100_000)
_OFFSET = _Kind("a byte offset (an integer >= 0)", lambda v: type(v) is int and v >= 0)
_REQUIRED: Any = object()
# Option name -> (kind, default); ``None`` sent for an option means "not given".
_Options = dict[str, tuple[_Kind, Any]]

_CALL_OPTIONS: _Options = {
    "stream_logs": (_FLAG, False),
    "remote": (_FLAG, False),
    "enqueue": (_FLAG, False),
    "shm": (_FLAG, False),
    "refs": (_TEXTS, ()),
    "timeout": (_TIMEOUT, None),
    "run_name": (_RUN_NAME, None),
}


def _parse_options(raw: bytes | None, table: _Options, path: str) -> dict[str, Any]:
    """The options of a request, checked against its route's table, with defaults filled in."""
    given = _load_json(raw, "the X-Rh-Meta header") if raw else {}
    if not isinstance(given, dict):
        raise BadRequestError('the X-Rh-Meta header must be a JSON object of options, e.g. {"timeout": 10}')
    for name in given:
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise BadRequestError(f"unknown option {name!r} for {path}; its options are: {known}")
    options = {}
    for name, (kind, default) in table.items():
        value = given.get(name)
        if value is None:
            if default is _REQUIRED:
                raise BadRequestError(f"missing field {name!r}: {path} needs it ({kind.expected}) in the X-Rh-Meta "
                                      "header")
            value = default
        elif not kind.fits(value):
            raise BadRequestError(f"option {name!r} must be {kind.expected}, not {_shown(value)}")
        options[name] = value
    return options


def _shown(value: Any) -> str:
    """A short description of a value for an error message (never recursing into containers)."""
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)[:40]
    if isinstance(value, str):
        return repr(value[:80])
    return "a JSON object" if isinstance(value, dict) else "a JSON list"


def _load_json(data: bytes | bytearray | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(data))
    except RecursionError:
        raise BadRequestError(f"{what} is JSON nested too deeply; keep it to a few hundred levels") from None
    except ValueError as exc:
        raise BadRequestError(f"{what} is not valid JSON: {exc}") from None


def _serialized_json(value: Any, what: str) -> memoryview:
    """A value parsed from JSON, serialized for a worker (JSON values always pickle, unless nested too deeply)."""
    try:
        return memoryview(serialization.join(serialization.serialize(value)))
    except (RecursionError, SerializationError):
        raise BadRequestError(f"{what} is JSON nested too deeply; keep it to a few hundred levels") from None


def _checked_payload(body: memoryview) -> memoryview:
    """``body`` as a serialized value, its framing checked (an empty body means no value)."""
    if body.nbytes:
        try:
            serialization.split(body)
        except SerializationError as exc:
            raise BadRequestError(f"malformed body: {exc}") from None
    return body


class _Request:
    __slots__ = ("path", "options", "body", "json_mode", "caller")

    def __init__(self, path: str, options: dict[str, Any], body: memoryview, json_mode: bool, caller: str) -> None:
        self.path, self.options, self.body, self.json_mode = path, options, body, json_mode
        self.caller = caller  # who sent it, as its run records

    def payload(self) -> memoryview:
        """The body as a serialized value (see :func:`_checked_payload`)."""
        return _checked_payload(self.body)

    def value_payload(self) -> memoryview:
        """The serialized value the body holds; for JSON clients, the JSON document itself is the value."""
        if not self.json_mode:
            return self.payload()
        return _serialized_json(_load_json(self.body, "the body"), "the body")

    def call_payload(self) -> memoryview:
        """The serialized (args, kwargs) of a call, converted from JSON for non-runhouse clients."""
        if not self.json_mode:
            return self.payload()
        if not self.body.nbytes:
            args, kwargs = [], {}
        else:
            data = _load_json(self.body, "the body")
            if not isinstance(data, dict):
                raise BadRequestError('body must be a JSON object like {"args": [1, 2], "kwargs": {}}')
            args, kwargs = data.get("args", []), data.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise BadRequestError('"args" must be a JSON list and "kwargs" a JSON object')
        return _serialized_json((tuple(args), kwargs), "the body")


class _Response:
    """One HTTP response: a single frame, or log frames streamed as they come followed by the last frame."""

    __slots__ = ("send", "json_mode", "started", "logs", "flusher", "sent")

    def __init__(self, send: Callable[[dict], Awaitable[None]], json_mode: bool) -> None:
        self.send, self.json_mode = send, json_mode
        self.started = False
        self.sent = 0  # body bytes, for the metrics
        self.logs: deque[tuple[int, bytes]] = deque()
        self.flusher: asyncio.Task | None = None

    def log(self, data: bytes) -> None:
        self.stream(protocol.LOG, data)

    def stream(self, kind: int, data: bytes) -> None:
        """Send a LOG (or ITEMS) frame soon, after those before it; the last frame waits for them."""
        self.logs.append((kind, data))
        if self.flusher is None:
            self.flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self.logs:
            kind, data = self.logs.popleft()
            if not self.started:
                self.started = True
                await self.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", _CT)]})
            head = protocol.http_frame_head(kind, len(data))
            self.sent += len(head) + len(data)
            await self.send({"type": "http.response.body", "body": head + data, "more_body": True})
        self.flusher = None

    async def frame(self, kind: int, parts: list, headers: list | None = None) -> None:
        if self.flusher is not None:
            await self.flusher
        size = serialization.serialized_size(parts)
        head = protocol.http_frame_head(kind, size)
        self.sent += len(head) + size
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

    async def json(self, status: int, data: Any, headers: list | None = None) -> None:
        await self.json_bytes(status, json.dumps(data, default=repr, allow_nan=False).encode(), headers)

    async def json_bytes(self, status: int, body: bytes, headers: list | None = None,
                         content_type: bytes = _JSON) -> None:
        self.sent += len(body)
        hdrs = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(headers or [])]
        await self.send({"type": "http.response.start", "status": status, "headers": hdrs})
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
            await self.json_bytes(200, _json_result(bytes(reply.payload)))
        else:
            await self.frame(protocol.RESULT, [reply.payload])

    async def error(self, exc: RunhouseError | Exception, status: int, headers: list | None = None) -> None:
        envelope = protocol.error_envelope(type(exc).__name__, str(exc), protocol.exception_details(exc))
        if not self.started:
            await self.json(status, envelope, headers)
        else:  # logs were already streamed with a 200: report in-band
            info = {**envelope["error"], "traceback": "", "pickled": None}
            await self.frame(protocol.ERROR, [protocol.encode_meta(info)])


def _query_arguments(query: bytes) -> dict[str, Any]:
    """Keyword arguments from a query string: each value read as JSON (``?n=3&tags=["a"]``), else as text."""
    arguments: dict[str, Any] = {}
    for name, value in urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True, strict_parsing=False):
        if not name.isidentifier():
            raise BadRequestError(f"query argument {name!r} is not a Python identifier; send it in a POST body")
        try:
            arguments[name] = json.loads(value)
        except ValueError:
            arguments[name] = value
    return arguments


def _json_result(body: bytes) -> bytes:
    """The JSON answer ``{"result": ...}`` around a worker's JSON-encoded result.

    Python's encoder writes NaN and the infinities as bare words, which are not JSON; a result holding one is
    re-encoded with ``null`` in their place. Any other result is wrapped as it came, never parsed.
    """
    if not body:
        return b'{"result": null}'
    if b"NaN" in body or b"Infinity" in body:  # may also be inside a string: then re-encoding changes nothing
        try:
            value = json.loads(body, parse_constant=lambda _: None)
            body = json.dumps(value, allow_nan=False).encode()
        except RecursionError:
            raise SerializationError("the result is nested too deeply to send as JSON; call it with the runhouse "
                                     "client, or return a flatter value") from None
    return b'{"result": ' + body + b"}"


class App:
    """The ASGI application of the daemon; bodies over ``max_body_bytes`` are refused (413) unread."""

    def __init__(self, runtime: Runtime, token: str, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 den_auth: DenAuth | None = None) -> None:
        self.runtime = runtime
        # Den tokens accepted beside the daemon's own (off until enabled; see runhouse.server.den_auth).
        self.den_auth = den_auth or DenAuth(None, runtime.status)
        self.max_body_bytes = max_body_bytes
        self._auth = f"Bearer {token}".encode()
        # Calls straight from this machine's clients to main workers (None: workers are elsewhere).
        self.direct = DirectHub.attach(runtime, token, lambda: self.den_auth.count(DAEMON_CALLER))
        self._health = {"status": "ok", "pid": os.getpid(), "version": __version__, "build": build_id()}
        # Each control operation: its handler, and its options (the one place they are checked).
        text, env, flag, refs = (_TEXT, _REQUIRED), (_TEXT, None), (_FLAG, False), (_TEXTS, ())
        self._routes: dict[str, tuple[Callable[[_Request, _Response], Awaitable[None]], _Options]] = {
            Op.ENV: (self._env, {"env": (_OBJECT, _REQUIRED)}),
            Op.INSTALL: (self._install, {"env": env, "packages": (_OBJECTS, _REQUIRED)}),
            Op.DEPLOY: (self._deploy, {"name": text, "env": env, "kind": text,
                                       "spec": (_OBJECT, _REQUIRED), "version": text}),
            Op.INSTANTIATE: (self._instantiate, {"name": text, "class_name": text, "refs": refs}),
            Op.MAP: (self._map, {"name": text, "method": text, "sizes": (_SIZES, _REQUIRED), "stream_logs": flag,
                                 "refs": refs, "shm": flag, "run_name": (_RUN_NAME, None)}),
            Op.PUT: (self._put, {"key": text, "env": env}),
            Op.GET: (self._get, {"key": text, "shm": flag, "timeout": (_WAIT, None)}),
            Op.READY: (self._ready, {"keys": (_TEXTS, _REQUIRED)}),
            Op.DELETE: (self._delete, {"keys": (_TEXTS, _REQUIRED)}),
            Op.KEYS: (self._keys, {"env": env}),
            Op.GETATTR: (self._getattr, {"name": text, "attr": text, "shm": flag}),
            Op.SETATTR: (self._setattr, {"name": text, "attr": text}),
            Op.RUN: (self._run, {"cmds": (_COMMANDS, _REQUIRED), "env": env, "stream_logs": flag, "python": flag,
                                 "run_name": (_RUN_NAME, None)}),
            Op.STATUS: (self._status, {}),
            Op.AUTOSTOP: (self._autostop, {"minutes": (_MINUTES, _REQUIRED), "command": (_TEXT, None),
                                           "keepalive": (_TEXT, None), "set_commands": flag}),
            Op.RUNS: (self._runs, {"name": (_TEXT, None), "limit": (_LIMIT, 50)}),
            Op.LOGS: (self._logs, {"run_id": text, "offset": (_OFFSET, 0)}),
            Op.DEN_AUTH: (self._den_auth, {"den_url": (_TEXT, None), "address": (_TEXT, None),
                                           "heartbeat_key": (_TEXT, None)}),
            Op.ROUTE: (self._route, {"name": text, "crashed_pid": (_PID, None), "method": (_TEXT, None)}),
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
        counted = False  # an authenticated request: it keeps the idle timer from firing while it runs
        try:
            if path == protocol.HEALTH_PATH and scope["method"] == "GET":
                await response.json(200, self._health, _CLOSE)  # one answer per connection for strangers
                return
            headers = dict(scope["headers"])
            authorization = headers.get(b"authorization", b"")
            if hmac.compare_digest(authorization, self._auth):
                caller = DAEMON_CALLER
            elif not self.den_auth.enabled:
                # Closed after the answer: a stranger's connection never waits for a body nobody reads.
                await response.error(AuthenticationError("missing or wrong token: send 'Authorization: Bearer "
                                                         "<token>' (`runhouse token` prints it)"), 401, _CLOSE)
                return
            else:
                try:
                    caller = await self.den_auth.caller(authorization, _access_needed(path))
                except RunhouseError as exc:
                    await response.error(exc, getattr(exc, "status", 401), _CLOSE)
                    return
            self.den_auth.count(caller)
            if path == protocol.METRICS_PATH and scope["method"] == "GET":  # scrapes keep no cluster awake
                await self._flush_direct()
                await response.json_bytes(200, self.runtime.metrics.exposition(), content_type=_METRICS_TYPE)
                return
            self.runtime.idle.begin()
            counted = True
            response.json_mode = json_mode = headers.get(b"content-type", b"") != _CT
            query = b""
            if scope["method"] == "GET" and not path.startswith(protocol.CONTROL_PREFIX):
                query, json_mode = scope.get("query_string", b""), True  # a call as curl -X GET writes it
                response.json_mode = True
            elif scope["method"] != "POST":
                raise BadRequestError(f"use POST for {path} (GET works for calls: /<name>/<method>?arg=value)")
            handler: Callable[[_Request, _Response], Awaitable[None]] | None = None
            if path.startswith(protocol.CONTROL_PREFIX):
                route = self._routes.get(path[len(protocol.CONTROL_PREFIX):])
                if route is None:
                    raise ObjectNotFoundError(f"no such endpoint {path}")
                handler, table = route
            else:
                table = _CALL_OPTIONS
            options = _parse_options(headers.get(b"x-rh-meta"), table, path)
            body = await _read_body(receive, headers.get(b"content-length"), self.max_body_bytes)
            self.runtime.metrics.bytes_in.inc(body.nbytes)
            if query:
                body = memoryview(json.dumps({"kwargs": _query_arguments(query)}).encode())
            request = _Request(path, options, body, json_mode, caller)
            if handler is not None:
                await handler(request, response)
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
        finally:
            if counted:
                self.runtime.idle.end()
                self.runtime.metrics.bytes_out.inc(response.sent)

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
        options = request.options
        call = self.runtime.call(
            name,
            method,
            request.call_payload(),
            stream_logs=options["stream_logs"] and not request.json_mode,
            remote=options["remote"],
            refs=options["refs"],
            timeout=options["timeout"],
            enqueue=options["enqueue"],
            json_result=request.json_mode,
            shm=options["shm"] and not request.json_mode,
            on_log=response.log,
            caller=request.caller,
            run_name=options["run_name"],
        )
        reply = await _cancel_on_disconnect(call, receive)
        if "stored" in reply.meta:
            await response.value({"ref": reply.meta["stored"], "run_id": reply.meta["run"]})
        else:
            await response.reply(reply)

    async def _map(self, request: _Request, response: _Response) -> None:
        """Items' answers go out in order as soon as they are (ITEMS frames of item frames), then a RESULT."""
        if request.json_mode:
            raise BadRequestError("map needs the runhouse client (serialized items)")
        options = request.options
        sizes = options["sizes"]
        if sum(sizes) != request.body.nbytes:
            raise BadRequestError(f"item sizes add up to {sum(sizes)} bytes, the body has {request.body.nbytes}")
        items, offset = [], 0
        for size in sizes:
            items.append(_checked_payload(request.body[offset : offset + size]))
            offset += size
        waiting: dict[int, Reply | BaseException] = {}
        sent = 0

        def on_results(indices: list[int], results: list[Reply | BaseException]) -> None:
            nonlocal sent
            waiting.update(zip(indices, results, strict=True))
            if sent not in waiting:
                return
            parts: list = []
            while sent in waiting:
                answer = waiting.pop(sent)
                if isinstance(answer, Reply):
                    kind, payload = answer.kind, answer.payload
                else:
                    info = protocol.encode_meta(serialization.pack_exception(answer))
                    kind, payload = protocol.ERROR, memoryview(info)
                parts += [protocol.http_frame_head(kind, payload.nbytes), payload]
                sent += 1
            response.stream(protocol.ITEMS, b"".join(parts))

        await self.runtime.map(
            options["name"],
            options["method"],
            items,
            on_results,
            stream_logs=options["stream_logs"],
            refs=options["refs"],
            shm=options["shm"],
            on_log=response.log,
            caller=request.caller,
            run_name=options["run_name"],
        )
        await response.frame(protocol.RESULT, [])

    # --- control -------------------------------------------------------------------------------------
    async def _env(self, request: _Request, response: _Response) -> None:
        try:
            spec = EnvSpec.from_dict(request.options["env"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequestError(f"invalid env spec: {exc}") from None
        result = await self.runtime.create_env(spec, lambda line: response.log((line + "\n").encode()))
        await response.value(result)

    async def _install(self, request: _Request, response: _Response) -> None:
        packages = [PackageInstall.from_dict(p) for p in request.options["packages"]]
        result = await self.runtime.install(request.options["env"] or DEFAULT_ENV, packages,
                                            lambda line: response.log((line + "\n").encode()))
        await response.value(result)

    async def _deploy(self, request: _Request, response: _Response) -> None:
        options = request.options
        reply = await self.runtime.deploy(
            options["name"],
            options["env"] or DEFAULT_ENV,
            options["kind"],
            options["spec"],
            bytes(request.body),
            options["version"],
        )
        await (response.value(reply.meta["info"]) if reply.kind == protocol.RESULT else response.reply(reply))

    async def _instantiate(self, request: _Request, response: _Response) -> None:
        options = request.options
        reply = await self.runtime.instantiate(
            options["name"], options["class_name"], request.call_payload(), options["refs"]
        )
        await (response.value(reply.meta["info"]) if reply.kind == protocol.RESULT else response.reply(reply))

    async def _put(self, request: _Request, response: _Response) -> None:
        options = request.options
        await self.runtime.put(options["key"], options["env"] or DEFAULT_ENV, request.value_payload())
        await response.value(None)

    async def _get(self, request: _Request, response: _Response) -> None:
        options = request.options
        entry, reply = await self.runtime.get(options["key"], shm=options["shm"], timeout=options["timeout"])
        if reply is None:
            handle = {"kind": entry.kind, "env": entry.env, "info": entry.info}
            await response.value(handle, [(protocol.KIND_HEADER.encode(), protocol.HANDLE_KIND.encode())])
        elif request.json_mode and reply.kind != protocol.ERROR:
            raise BadRequestError("stored values are serialized Python objects; use the runhouse client")
        else:
            await response.reply(reply)

    async def _ready(self, request: _Request, response: _Response) -> None:
        await response.value(self.runtime.ready(request.options["keys"]))

    async def _delete(self, request: _Request, response: _Response) -> None:
        await response.value(await self.runtime.delete(request.options["keys"]))

    async def _keys(self, request: _Request, response: _Response) -> None:
        await response.value(self.runtime.keys(request.options["env"]))

    async def _getattr(self, request: _Request, response: _Response) -> None:
        if request.json_mode:
            raise BadRequestError("attributes are sent as serialized Python objects; use the runhouse client, or "
                                  "call a method that returns the attribute")
        options = request.options
        await response.reply(await self.runtime.getattr(options["name"], options["attr"], shm=options["shm"]))

    async def _setattr(self, request: _Request, response: _Response) -> None:
        options = request.options
        await response.reply(await self.runtime.setattr(options["name"], options["attr"], request.value_payload()))

    async def _run(self, request: _Request, response: _Response) -> None:
        options = request.options
        on_log = response.log if options["stream_logs"] and not request.json_mode else None
        results = await self.runtime.run(options["cmds"], options["env"], on_log, options["python"],
                                         caller=request.caller, run_name=options["run_name"])
        await response.value(results)

    async def _autostop(self, request: _Request, response: _Response) -> None:
        options = request.options
        await response.value(self.runtime.idle.set(options["minutes"], options["command"], options["keepalive"],
                                                   keep_commands=not options["set_commands"]))

    async def _den_auth(self, request: _Request, response: _Response) -> None:
        options = request.options
        if options["den_url"] is not None or options["address"] is not None or options["heartbeat_key"] is not None:
            await self.den_auth.configure(DenAuthSettings(options["den_url"], options["address"],
                                                          options["heartbeat_key"]))
        await response.value(self.den_auth.describe())

    async def _route(self, request: _Request, response: _Response) -> None:
        """Where the daemon's own token holder may call an object directly (None: through the daemon); with
        ``crashed_pid``, the error of a direct call whose worker went away mid-call."""
        options = request.options
        if self.direct is None or request.caller != DAEMON_CALLER:
            await response.value(None)
        elif options["crashed_pid"] is not None:
            raise await self.direct.crashed(options["crashed_pid"], options["name"], options["method"] or "call")
        else:
            await response.value(await self.direct.route(options["name"]))

    async def _flush_direct(self) -> None:
        """Runs of direct calls reach the daemon in batches: collect them before anything reads runs."""
        if self.direct is not None:
            await self.direct.flush()

    async def _status(self, request: _Request, response: _Response) -> None:
        await self._flush_direct()
        await response.value(self.runtime.status())

    async def _runs(self, request: _Request, response: _Response) -> None:
        await self._flush_direct()
        await response.value(self.runtime.runs.runs(request.options["name"], request.options["limit"]))

    async def _logs(self, request: _Request, response: _Response) -> None:
        await self._flush_direct()
        await response.value(self.runtime.runs.logs(request.options["run_id"], request.options["offset"]))


async def _read_body(receive: Callable, length_header: bytes | None, limit: int) -> memoryview:
    """Read the whole body into one writable buffer that grows with what arrives, up to ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before anything is read; the buffer is never
    sized from the header, so a large declaration costs nothing until the bytes come.
    """
    try:
        declared = int(length_header) if length_header else 0
    except ValueError:
        raise BadRequestError("Content-Length is not a number") from None
    if declared > limit:
        raise _too_large(f"{declared} bytes", limit)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        body += message.get("body", b"")
        if len(body) > limit:  # only without Content-Length (chunked): otherwise it was checked above
            raise _too_large(f"over {limit} bytes", limit)
        if not message.get("more_body"):
            return memoryview(body)


def _too_large(size: str, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is {size}; this daemon accepts at most {limit} bytes per request (start it with "
        f"{MAX_BODY_ENV}=<bytes> to change that), or pass large data as files or in several calls"
    )


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
