"""HTTP client to a daemon.

Keep-alive stdlib ``http.client`` connections, one per thread: measured here at about a third of the
per-call latency of httpx. A request on a connection the daemon has since closed (for example because it
restarted) is retried on a fresh connection, as is a refused connection while the daemon comes back:
neither can have reached user code.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from runhouse import serialization
from runhouse.errors import BY_NAME, ClusterUnreachableError, DaemonError, RunhouseError
from runhouse.transport import wire

CONNECT_TIMEOUT_S = 5.0
# How long a client keeps retrying a refused connection, e.g. while the daemon restarts.
RECONNECT_WINDOW_S = 10.0
# Calls may run as long as user code needs; bound one with ``timeout=`` on the call.
CALL_READ_TIMEOUT_S: float | None = None
_RECONNECT_ERRORS = (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected)

LogSink = Callable[[bytes], None]


class Response:
    """A daemon's answer: the final frame's kind and payload, and the response headers."""

    __slots__ = ("kind", "payload", "headers")

    def __init__(self, kind: int, payload: bytearray, headers: http.client.HTTPMessage) -> None:
        self.kind, self.payload, self.headers = kind, payload, headers

    def value(self) -> Any:
        """The deserialized result; raises the remote exception for an ERROR frame."""
        if self.kind == wire.ERROR:
            raise error_from_info(wire.decode_meta(self.payload))
        if not self.payload:  # operations with nothing to return
            return None
        return serialization.deserialize(self.payload)


def error_from_info(info: dict[str, Any]) -> BaseException:
    """Rebuild an exception sent by the daemon or a worker."""
    if not info.get("pickled") and info.get("type") in BY_NAME:
        return _rebuild(BY_NAME[info["type"]], info.get("message", ""), info.get("details") or {})
    return serialization.unpack_exception(info)


def _rebuild(cls: type[RunhouseError], message: str, details: dict[str, Any]) -> RunhouseError:
    """A runhouse error from its type, message and data attributes (``exit_code``, ``status``, ...)."""
    try:
        return cls(message, **details)  # type: ignore[call-arg]
    except TypeError:
        exc = cls(message)
        exc.__dict__.update(details)
        return exc


class _Connection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(self.read_timeout)

    read_timeout: float | None = CALL_READ_TIMEOUT_S


class DaemonClient:
    """Sends requests to one daemon; safe to share between threads."""

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.host, self.port, self.token = host, port, token
        self._local = threading.local()
        self._auth = f"Bearer {token}" if token else ""

    def _connection(self) -> tuple[_Connection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        conn = _Connection(self.host, self.port, timeout=CONNECT_TIMEOUT_S)
        self._local.conn = conn
        return conn, False

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        """Close this thread's connection."""
        self._drop_connection()

    def request(
        self,
        path: str,
        meta: dict[str, Any] | None = None,
        parts: Sequence[Any] = (),
        on_log: LogSink | None = None,
        timeout: float | None = CALL_READ_TIMEOUT_S,
    ) -> Response:
        """POST a serialized payload and read the framed answer, streaming LOG frames to ``on_log``.

        Raises:
            ClusterUnreachableError: nothing answers at the daemon's address.
            DaemonError: the daemon rejected the request (subclass by HTTP status).
        """
        headers = {
            "Authorization": self._auth,
            "Content-Type": wire.CONTENT_TYPE,
            "Content-Length": str(serialization.serialized_size(parts)),
        }
        if meta:
            headers["X-Rh-Meta"] = json.dumps(meta)
        deadline = time.monotonic() + RECONNECT_WINDOW_S
        while True:
            conn, reused = self._connection()
            conn.read_timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                return self._exchange(conn, path, headers, parts, on_log)
            except RunhouseError:  # an answer from the daemon (CallTimeoutError is also a TimeoutError)
                raise
            except ConnectionRefusedError as exc:
                self._drop_connection()
                if time.monotonic() > deadline:
                    raise ClusterUnreachableError(
                        f"no runhouse daemon answers at {self.host}:{self.port}; start it with `runhouse start"
                        f" --port {self.port}` or cluster.up_if_not()"
                    ) from exc
                time.sleep(0.05)
            except _RECONNECT_ERRORS:
                self._drop_connection()
                if not reused:
                    raise
            except TimeoutError as exc:
                self._drop_connection()
                raise ClusterUnreachableError(f"the daemon at {self.host}:{self.port} stopped answering") from exc
            except BaseException:  # e.g. Ctrl-C mid-call: closing the connection cancels the call remotely
                self._drop_connection()
                raise

    def _exchange(
        self, conn: _Connection, path: str, headers: dict, parts: Sequence[Any], on_log: LogSink | None
    ) -> Response:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        if len(parts) <= 3 and serialization.serialized_size(parts) < 65536:
            conn.endheaders(b"".join(parts))
        else:
            conn.endheaders()
            for part in parts:
                conn.send(part)
        response = conn.getresponse()
        if response.getheader("content-type", "") != wire.CONTENT_TYPE:
            body = response.read()
            raise _daemon_error(response.status, body, self.host, self.port)
        while True:
            head = _read_exactly(response, wire.HTTP_FRAME.size)
            kind, size = wire.HTTP_FRAME.unpack(head)
            payload = _read_exactly(response, size)
            if kind == wire.LOG:
                if on_log is not None:
                    on_log(bytes(payload))
                continue
            if response.isclosed() is False:
                response.read()  # consume the (empty) end of a chunked body so the connection can be reused
            return Response(kind, payload, response.headers)


def _read_exactly(response: http.client.HTTPResponse, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        count = response.readinto(view[got:])
        if not count:
            raise ClusterUnreachableError("the daemon closed the connection in the middle of its answer")
        got += count
    return buf


def _daemon_error(status: int, body: bytes, host: str, port: int) -> RunhouseError:
    try:
        info = json.loads(body)["error"]
        cls = BY_NAME.get(info["type"], DaemonError)
        message, details = info["message"], info.get("details") or {}
    except (ValueError, KeyError, TypeError):
        cls, message, details = DaemonError, f"unexpected answer from {host}:{port} (HTTP {status}): {body[:200]!r}", {}
    if issubclass(cls, DaemonError):
        details["status"] = status
    return _rebuild(cls, message, details)
