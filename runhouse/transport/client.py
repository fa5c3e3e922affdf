"""HTTP client to a daemon, built for the call hot path.

One keep-alive connection per thread: a plain socket with TCP_NODELAY, the request written in one
``sendall``, the response parsed by httptools (the C parser uvicorn uses). Measured here, stdlib
``http.client`` spent more time parsing response headers than the daemon spent answering, and httpx three
times more again. Response bodies are frames (see :mod:`runhouse.protocol`); LOG frames are handed to
``on_log`` as they arrive.

A request sent on a kept-alive connection that the daemon had closed (for example because it restarted)
is retried on a fresh connection, as is a refused connection while the daemon comes back: neither can
have reached user code.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import httptools

from runhouse import protocol, serialization
from runhouse.errors import ClusterUnreachableError
from runhouse.lifetime import Closeable

CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 0.5
# How long a client keeps retrying a refused connection, e.g. while the daemon restarts.
RECONNECT_WINDOW_S = 10.0
# Calls, maps and commands may run as long as user code needs (up to a week); bound one with ``timeout=``.
CALL_READ_TIMEOUT_S = 7 * 24 * 3600.0
# The daemon enforces a call's own timeout; the client waits this much longer to receive its answer.
ANSWER_GRACE_S = 30.0
_RECV_CHUNK = 256 * 1024
# Where the answers of a map's items go as they arrive (the payload of each ITEMS frame).
ItemsSink = Callable[[bytearray], None]



class Response:
    """A daemon's answer: the final frame's kind and payload, and the response headers (lower-case names)."""

    __slots__ = ("kind", "payload", "headers")

    def __init__(self, kind: int, payload: bytearray, headers: dict[str, str]) -> None:
        self.kind, self.payload, self.headers = kind, payload, headers

    def value(self) -> Any:
        """The deserialized result; raises the remote exception for an ERROR frame."""
        if self.kind == protocol.ERROR:
            raise protocol.error_from_info(protocol.decode_meta(self.payload))
        if not self.payload:  # operations with nothing to return
            return None
        return serialization.deserialize(self.payload)


def answer_wait(timeout: float | None) -> float:
    """How long to wait for the answer to a request the daemon bounds by ``timeout`` (None: unbounded)."""
    return CALL_READ_TIMEOUT_S if timeout is None else timeout + ANSWER_GRACE_S


def health(
    port: int, host: str = "127.0.0.1", timeout: float = HEALTH_TIMEOUT_S, ssl_context: ssl.SSLContext | None = None
) -> dict | None:
    """The daemon's ``/health`` answer (pid, version, build), or None when nothing answers."""
    conn: http.client.HTTPConnection
    if ssl_context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl_context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", protocol.HEALTH_PATH)
        response = conn.getresponse()
        return json.loads(response.read()) if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def pinned_ssl_context(cert_pem: str) -> ssl.SSLContext:
    """A client TLS context that trusts exactly one certificate (the daemon's, read from its host)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the pinned certificate itself is the identity
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=cert_pem)
    return context


class _StaleConnection(Exception):
    """The daemon closed a kept-alive connection before answering anything."""


class _Reader:
    """httptools callbacks: collect status and headers, split the body into frames as it arrives."""

    def __init__(self, on_log: protocol.LogSink | None, on_items: ItemsSink | None = None) -> None:
        self.on_log, self.on_items = on_log, on_items
        self.headers: dict[str, str] = {}
        self.done = False
        self.framed = False
        self.raw = bytearray()  # body of a non-framed (JSON error) answer
        self.frames = protocol.FrameAssembler(protocol.HTTP_FRAME, lambda f: f[1], self._on_frame)
        self.final: tuple[int, bytearray] | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.framed = self.headers.get("content-type") == protocol.CONTENT_TYPE

    def on_message_complete(self) -> None:
        self.done = True

    def on_body(self, body: bytes) -> None:
        if self.framed:
            self.frames.feed(body)
        else:
            self.raw += body

    def _on_frame(self, fields: tuple, payload: bytearray) -> None:
        kind = fields[0]
        if kind == protocol.LOG:
            if self.on_log is not None:
                self.on_log(bytes(payload))
        elif kind == protocol.ITEMS and self.on_items is not None:
            self.on_items(payload)
        else:
            self.final = (kind, payload)


class _Connection:
    """One kept-alive HTTP/1.1 connection to the daemon."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ssl_context.wrap_socket(raw) if ssl_context is not None else raw
        self.buffer = bytearray(_RECV_CHUNK)
        self.used = False
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def exchange(self, head: bytes, parts: Sequence[Any], size: int, on_log: protocol.LogSink | None,
                 timeout: float, on_items: ItemsSink | None = None) -> _Reader:
        reused, self.used = self.used, True
        sock = self.sock
        sock.settimeout(timeout)
        send_error: OSError | None = None
        try:
            if size < protocol.SMALL_FRAME_BYTES:
                sock.sendall(b"".join([head, *parts]))
            else:
                sock.sendall(head)
                for part in parts:
                    sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError) as exc:
            if reused:
                raise _StaleConnection() from exc
            send_error = exc  # the daemon may have answered first (a wrong token, a body over its cap): read it
        reader = _Reader(on_log, on_items)
        parser = httptools.HttpResponseParser(reader)
        view = memoryview(self.buffer)
        received = 0
        while not reader.done:
            try:
                count = sock.recv_into(view)
            except ConnectionResetError:
                count = 0
            if count == 0:
                if received == 0 and reused:
                    raise _StaleConnection()
                if received == 0 and send_error is not None:
                    raise ClusterUnreachableError(
                        f"the daemon at {self.host}:{self.port} closed the connection while the request was being "
                        f"sent ({send_error})"
                    ) from send_error
                if received == 0:  # a tunnel that accepts but cannot reach the daemon: nothing was processed
                    refused = ConnectionRefusedError(f"nothing answered behind {self.host}:{self.port}")
                    raise refused
                raise ClusterUnreachableError("the daemon closed the connection in the middle of its answer")
            received += count
            parser.feed_data(view[:count])
        if reader.headers.get("connection", "").lower() == "close":
            self.close()
            self.used = False
            raise _ClosedAfter(reader)
        reader.headers[":status"] = str(parser.get_status_code())
        return reader


class _ClosedAfter(Exception):
    """The answer is complete but the daemon closed the connection after it."""

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader


class DaemonClient(Closeable):
    """Sends requests to one daemon; safe to share between threads (each uses its own connection).

    A context manager: leaving the block closes every thread's connection.
    """

    def __init__(
        self,
        host: str,
        port: int,
        token: str | None,
        reconnect_window: float = RECONNECT_WINDOW_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.token = host, port, token
        self.reconnect_window = reconnect_window
        self.ssl_context = ssl_context
        self._local = threading.local()
        self._open: weakref.WeakSet[_Connection] = weakref.WeakSet()  # every thread's, for close()
        self._open_lock = threading.Lock()
        self._fixed_headers = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {token or ''}\r\nContent-Type: {protocol.CONTENT_TYPE}\r\n"
        )

    def _connection(self) -> _Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = _Connection(self.host, self.port, self.ssl_context)
            with self._open_lock:
                self._open.add(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        """Close every thread's connection; the next request opens a new one."""
        with self._open_lock:
            connections, self._open = list(self._open), weakref.WeakSet()
        for conn in connections:
            conn.close()


    def request(
        self,
        path: str,
        meta: dict[str, Any] | None = None,
        parts: Sequence[Any] = (),
        on_log: protocol.LogSink | None = None,
        timeout: float = CALL_READ_TIMEOUT_S,
        on_items: ItemsSink | None = None,
    ) -> Response:
        """POST a serialized payload and read the framed answer, streaming LOG frames to ``on_log`` (and a
        map's ITEMS frames to ``on_items``).

        Raises:
            ClusterUnreachableError: nothing answers at the daemon's address.
            DaemonError: the daemon rejected the request (subclass by HTTP status).
        """
        size = serialization.serialized_size(parts)
        meta_line = f"X-Rh-Meta: {json.dumps(meta)}\r\n" if meta else ""
        head = f"POST {path} HTTP/1.1\r\n{self._fixed_headers}{meta_line}Content-Length: {size}\r\n\r\n".encode()
        deadline = time.monotonic() + self.reconnect_window
        while True:
            try:
                conn = self._connection()
                reader = conn.exchange(head, parts, size, on_log, timeout, on_items)
                break
            except _ClosedAfter as closed:
                self._local.conn = None
                reader = closed.reader
                break
            except _StaleConnection:
                self._drop_connection()
            except ssl.SSLError as exc:
                self._drop_connection()
                raise ClusterUnreachableError(
                    f"TLS with {self.host}:{self.port} failed ({exc}): the daemon there does not have the "
                    "certificate this client pinned"
                ) from exc
            except ConnectionRefusedError as exc:
                self._drop_connection()
                if time.monotonic() > deadline:
                    unreachable = ClusterUnreachableError(
                        f"no runhouse daemon answers at {self.host}:{self.port}; start it with "
                        f"`runhouse start --port {self.port}` or cluster.up_if_not()"
                    )
                    unreachable.request_sent = False  # type: ignore[attr-defined]
                    raise unreachable from exc
                time.sleep(0.05)
            except TimeoutError as exc:
                self._drop_connection()
                raise ClusterUnreachableError(f"the daemon at {self.host}:{self.port} stopped answering") from exc
            except BaseException:  # e.g. Ctrl-C mid-call: closing the connection cancels the call remotely
                self._drop_connection()
                raise
        if not reader.framed:
            status = int(reader.headers.get(":status", 0))
            raise protocol.error_from_envelope(status, bytes(reader.raw), f"{self.host}:{self.port}")
        if reader.final is None:
            raise ClusterUnreachableError(f"the daemon at {self.host}:{self.port} sent an answer without a result")
        kind, payload = reader.final
        return Response(kind, payload, reader.headers)

