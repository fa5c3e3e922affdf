"""What the client, the daemon and its workers share: routes, framing, the JSON error envelope, names.

This module sits below all three (it imports only :mod:`runhouse.errors` and :mod:`runhouse.serialization`),
so none of them depends on another's code to speak to it.

Routes of the daemon (every one but ``GET /health`` needs ``Authorization: Bearer <token>``)::

    GET  /health              liveness, build id
    GET  /metrics             Prometheus metrics (text format)
    POST /{name}/{method}     call a function (method ``call``) or an instance's method
    POST /_/{op}              a control operation, one of :class:`Op`

Daemon <-> worker frames (a Unix socket pair, many requests in flight, matched by id)::

    !BIIQ  kind, request id, meta length, payload length; then meta (a pickled dict), then payload

A REQUEST's meta names its operation (``op``, one of :class:`WorkerOp`) and that operation's fields.

HTTP response bodies from the daemon (one frame when nothing is streamed; logs first when streaming)::

    !BQ    kind, payload length; then payload

A RESULT payload is a serialized value (see :mod:`runhouse.serialization`), an ERROR payload a pickled
dict describing the exception (:func:`runhouse.serialization.pack_exception`), a LOG payload UTF-8 text
made of whole lines. Answers that are not frames (JSON clients, errors before anything was streamed) are
JSON; an error is the envelope ``{"error": {"type", "message", "details"}}`` that Den answers with too.
"""

from __future__ import annotations

import json
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

from runhouse import serialization
from runhouse.errors import BY_NAME, DaemonError, RunhouseError

# --- routes ------------------------------------------------------------------------------------------------
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
CONTROL_PREFIX = "/_/"
# The method name that calls a function itself (``POST /{function}/call``).
CALL_METHOD = "call"
# The address the daemon binds unless told otherwise: reached through an SSH tunnel, or with TLS when bound wider.
DEFAULT_BIND_HOST = "127.0.0.1"
# The env that code runs in when none is named; it runs in the daemon's own interpreter.
DEFAULT_ENV = "default"
# What makes a folder a Python package to install (the client checks it before shipping, the daemon again).
PACKAGE_FILES = ("pyproject.toml", "setup.py", "setup.cfg")


class Op:
    """The control operations, each ``POST /_/<op>``."""

    ENV = "env"
    INSTALL = "install"
    DEPLOY = "deploy"
    INSTANTIATE = "instantiate"
    MAP = "map"
    PUT = "put"
    GET = "get"
    READY = "ready"
    DELETE = "delete"
    KEYS = "keys"
    GETATTR = "getattr"
    SETATTR = "setattr"
    RUN = "run"
    STATUS = "status"
    AUTOSTOP = "autostop"
    RUNS = "runs"
    LOGS = "logs"
    DEN_AUTH = "den_auth"
    ROUTE = "route"


# The longest timeout a request may ask for (a call's, or a ``get``'s wait), in seconds: a year.
MAX_TIMEOUT_S = 365 * 24 * 3600.0


def control_path(op: str) -> str:
    """The path of control operation ``op`` (one of :class:`Op`)."""
    return CONTROL_PREFIX + op


def call_path(name: str, method: str) -> str:
    """The path that calls ``method`` of the object ``name`` (``call`` for a function)."""
    return f"/{name}/{method}"


# Response header that marks a ``get`` answer as a handle to code rather than a stored value.
KIND_HEADER = "x-rh-kind"
HANDLE_KIND = "handle"

# --- names -------------------------------------------------------------------------------------------------
MAX_OBJECT_NAME_LENGTH = 255


def object_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name an object or env on a daemon, or None when it can.

    A name is 1-255 characters without ``/`` or control characters, not starting with ``_`` (the daemon's
    own routes start with ``/_/``).
    """
    if not isinstance(name, str) or not name:
        return "a name is a non-empty string"
    if len(name) > MAX_OBJECT_NAME_LENGTH:
        return f"use at most {MAX_OBJECT_NAME_LENGTH} characters"
    if name.startswith("_") or "/" in name:
        return f"use 1-{MAX_OBJECT_NAME_LENGTH} characters, no '/', not starting with '_'"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "control characters are not allowed"
    return None


# --- daemon <-> worker -------------------------------------------------------------------------------------
class WorkerOp:
    """The operations a worker serves, named by the ``op`` key of a request's meta."""

    CALL = "call"
    DEPLOY = "deploy"
    INSTANTIATE = "instantiate"
    GETATTR = "getattr"
    SETATTR = "setattr"
    PUT = "put"
    GET = "get"
    DELETE = "delete"
    FLUSH = "flush"
    MAP = "map"


# The class attribute through which a class deployed to a cluster names its client-side-only members (a
# collection of names, e.g. ``rh.Module``'s ``to``): the worker never offers them as remote methods. Names
# declared by any class in the method resolution order count.
CLIENT_ONLY_ATTR = "_rh_client_only"

# --- framing -----------------------------------------------------------------------------------------------
RESULT = 1
ERROR = 2
LOG = 3
# Daemon -> client, answering a map: answers of items (item frames back to back), in order, as they come.
ITEMS = 4
REQUEST = 10
CANCEL = 11
# A client's first frame on a direct connection to a worker: its payload is the daemon's token.
HELLO = 12
# Worker -> daemon: what direct calls did (runs started, their output, how they ended), batched.
EVENTS = 13

WORKER_HEADER = struct.Struct("!BIIQ")
HTTP_FRAME = struct.Struct("!BQ")

# Content type our client sends and receives; anything else is treated as JSON.
CONTENT_TYPE = "application/x-runhouse"
# Request header carrying the JSON-encoded options of a request (call options, deploy spec, ...).
META_HEADER = "x-rh-meta"
# Where streamed output (the payloads of LOG frames) goes as it arrives.
LogSink = Callable[[bytes], None]
# Bodies and frames smaller than this are joined into one write (one system call, one wake-up of the
# reader); larger ones are written part by part, never copied.
SMALL_FRAME_BYTES = 64 * 1024


def encode_meta(meta: dict[str, Any]) -> bytes:
    return pickle.dumps(meta, protocol=5)


def decode_meta(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    return pickle.loads(data)


def worker_frame_head(kind: int, rid: int, meta: bytes, payload_len: int) -> bytes:
    """Header plus meta of one daemon <-> worker frame; the payload follows separately."""
    return WORKER_HEADER.pack(kind, rid, len(meta), payload_len) + meta


def send_worker_frame(sock: socket.socket, kind: int, rid: int, meta: dict[str, Any] | None, parts: list) -> None:
    """Write one worker frame to ``sock``: a small one in one write (one wake-up of the reader), a large one
    part by part, never copied. Callers that share ``sock`` between threads hold their own lock around it."""
    send_encoded_worker_frame(sock, kind, rid, encode_meta(meta) if meta else b"", parts)


def send_encoded_worker_frame(sock: socket.socket, kind: int, rid: int, meta_bytes: bytes, parts: list) -> None:
    """:func:`send_worker_frame` with the meta already encoded (:func:`encode_meta`)."""
    size = serialization.serialized_size(parts)
    head = worker_frame_head(kind, rid, meta_bytes, size)
    if size < SMALL_FRAME_BYTES:
        sock.sendall(b"".join([head, *parts]))
    else:
        sock.sendall(head)
        for part in parts:
            sock.sendall(part)


def http_frame_head(kind: int, payload_len: int) -> bytes:
    return HTTP_FRAME.pack(kind, payload_len)


class FrameAssembler:
    """Cuts a byte stream, fed in chunks of any size, into frames of ``header`` plus a body.

    ``body_length(fields)`` gives a frame's body length from its unpacked header; each body is copied
    exactly once, into a buffer of its final size, and handed to ``on_frame(fields, body)``.
    """

    def __init__(
        self,
        header: struct.Struct,
        body_length: Callable[[tuple], int],
        on_frame: Callable[[tuple, bytearray], None],
    ) -> None:
        self.header, self.body_length, self.on_frame = header, body_length, on_frame
        self._head = bytearray()
        self._fields: tuple = ()
        self._body: bytearray | None = None
        self._filled = 0

    @property
    def idle(self) -> bool:
        """Whether no frame is partly read."""
        return self._body is None and not self._head

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        pos, end, size = 0, view.nbytes, self.header.size
        while pos < end:
            if self._body is None:
                take = min(size - len(self._head), end - pos)
                self._head += view[pos : pos + take]
                pos += take
                if len(self._head) < size:
                    return
                self._fields = self.header.unpack(self._head)
                self._head.clear()
                self._body, self._filled = bytearray(self.body_length(self._fields)), 0
            take = min(len(self._body) - self._filled, end - pos)
            self._body[self._filled : self._filled + take] = view[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == len(self._body):
                body, self._body = self._body, None
                self.on_frame(self._fields, body)


# --- errors ------------------------------------------------------------------------------------------------
def error_envelope(
    type_name: str, message: str, details: dict[str, Any] | list[Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The JSON body of an error answer: ``{"error": {"type", "message", "details"?, ...}}``."""
    info: dict[str, Any] = {"type": type_name, "message": message}
    if details is not None:
        info["details"] = details
    info.update(extra)
    return {"error": info}


def exception_details(exc: BaseException) -> dict[str, Any]:
    """The plain data attributes of a runhouse error (``exit_code``, ``status``, ...), for its envelope."""
    return {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, type(None)))}


def error_from_envelope(status: int, body: bytes, source: str) -> RunhouseError:
    """The typed error an error answer of the daemon or Den stands for.

    Known types (:data:`runhouse.errors.BY_NAME`) are rebuilt with their data; any other type, or a body that
    is not an envelope, becomes a :class:`DaemonError`. Errors of the ``DaemonError`` family carry ``status``.
    """
    try:
        info = json.loads(body)["error"]
        type_name, message = str(info["type"]), str(info["message"])
        details = info.get("details")
    except (ValueError, KeyError, TypeError):
        type_name, message, details = "", f"unexpected answer from {source} (HTTP {status}): {body[:200]!r}", None
    cls = BY_NAME.get(type_name, DaemonError)
    fields = dict(details) if isinstance(details, dict) else {}
    if issubclass(cls, DaemonError):
        fields["status"] = status
    return rebuild_error(cls, message, fields)


def rebuild_error(cls: type[RunhouseError], message: str, details: dict[str, Any]) -> RunhouseError:
    """A runhouse error from its type, message and data attributes (``exit_code``, ``status``, ...)."""
    try:
        return cls(message, **details)  # type: ignore[call-arg]
    except TypeError:
        exc = cls(message)
        exc.__dict__.update(details)
        return exc


def error_from_info(info: dict[str, Any]) -> BaseException:
    """Rebuild an exception the daemon or a worker sent in an ERROR frame."""
    if not info.get("pickled") and info.get("type") in BY_NAME:
        return rebuild_error(BY_NAME[info["type"]], info.get("message", ""), info.get("details") or {})
    return serialization.unpack_exception(info)
