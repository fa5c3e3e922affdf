"""The daemon process: run it in the foreground until SIGTERM (``python -c "...daemon import main; main()"``).

Its state files are :class:`~runhouse.daemon_files.DaemonFiles` (owner-only, fixed at every start); clients
start and stop it with :mod:`runhouse.resources.clusters.local_daemon`, which spawns this module's
:func:`main` as a new process.

Connections are served by :class:`GuardedHttpToolsProtocol`, uvicorn's httptools protocol plus what uvicorn
does not do, so that connections which never finish a request cannot exhaust the daemon:

- a request head must be complete within ``HEAD_TIMEOUT_S`` of the connection opening (or of the previous
  answer on a kept-alive connection), and at most ``UNAUTHENTICATED_HEAD_BYTES`` long until a valid
  ``Authorization`` header came (``MAX_HEAD_BYTES`` after: ``map`` sends its item sizes in a header);
- a connection whose request body stops arriving for ``BODY_IDLE_TIMEOUT_S`` is closed;
- at most ``max_connections`` are open: one more closes the connection that has waited longest for a
  request head (idle, or a stranger's that never finished one), or is refused when all are busy.
  uvicorn's ``limit_concurrency`` is not used: past its count it answers 503 to every new request, so
  half-open connections would lock out the callers that hold the token.

A stranger (no valid token) gets one answer per connection (``/health`` and 401 close it), so it can never
hold a connection busy. Our client retries a request whose kept-alive connection was closed unanswered.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import resource
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from runhouse.daemon_files import DaemonFiles, ensure_tls_cert, ensure_token, make_private, write_private
from runhouse.paths import default_server_port
from runhouse.protocol import DEFAULT_BIND_HOST as HOST
from runhouse.protocol import error_envelope
from runhouse.server.den_auth import DenAuth

HEAD_TIMEOUT_S = 5.0
BODY_IDLE_TIMEOUT_S = 10.0
UNAUTHENTICATED_HEAD_BYTES = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024**2
DEFAULT_MAX_CONNECTIONS = 10_000
# The environment variable (read at start) that sets the connection cap.
MAX_CONNECTIONS_ENV = "RH_MAX_CONNECTIONS"
# Connections waiting past these deadlines are found by a sweep this often.
_SWEEP_INTERVAL_S = 0.5
# Open files kept for the daemon's own use (workers, pipes, files) besides its connections: at least this many.
_RESERVED_FILES = 256
_BACKLOG = 4096


class ConnectionGuard:
    """What every connection of one server shares: the cap, the token, and who owes bytes since when."""

    def __init__(self, max_connections: int, token: str) -> None:
        self.max_connections = max_connections
        self.auth = f"Bearer {token}".encode()
        # Connections waiting for a request head, by when they started waiting (oldest first).
        self.heads: dict[GuardedHttpToolsProtocol, float] = {}
        # Connections receiving a request body, by when its bytes last came (least recent first).
        self.bodies: dict[GuardedHttpToolsProtocol, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the periodic sweep for expired connections (once, on the server's loop)."""
        if self._sweeper is None:
            self._sweeper = loop.call_later(_SWEEP_INTERVAL_S, self._sweep, loop)

    def evict_oldest_waiting(self) -> bool:
        """Close the connection that has waited longest for a request head; False when none waits."""
        if not self.heads:
            return False
        oldest = next(iter(self.heads))
        del self.heads[oldest]
        oldest.transport.abort()
        return True

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = loop.call_later(_SWEEP_INTERVAL_S, self._sweep, loop)
        now = loop.time()
        while self.heads:
            conn, since = next(iter(self.heads.items()))
            if now - since < HEAD_TIMEOUT_S:
                break
            del self.heads[conn]
            conn.transport.close()
        while self.bodies:
            conn, last = next(iter(self.bodies.items()))
            if now - last < BODY_IDLE_TIMEOUT_S:
                break
            del self.bodies[conn]
            if conn.flow.read_paused:  # the app has not taken what came yet: the client is not late
                self.bodies[conn] = now
            else:
                conn.transport.abort()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head and body deadlines, a head size limit and a connection cap.

    ``guard`` is set on a subclass per server (:func:`guarded_protocol`).
    """

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_head = False
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        guard.watch(self.loop)
        if len(self.connections) > guard.max_connections and not guard.evict_oldest_waiting():
            transport.abort()  # every other connection is busy with a request
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.guard.heads.pop(self, None)
        self.guard.bodies.pop(self, None)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_head:
            self._head_bytes += len(data)
            if self._head_bytes > UNAUTHENTICATED_HEAD_BYTES and not self.transport.is_closing():
                authorized = self._authorized()
                if self._head_bytes > MAX_HEAD_BYTES or not authorized:
                    self._refuse_head(authorized)
        elif self in self.guard.bodies:
            del self.guard.bodies[self]
            self.guard.bodies[self] = self.loop.time()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._awaiting_head = False
        self.guard.heads.pop(self, None)
        self.guard.bodies[self] = self.loop.time()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.guard.bodies.pop(self, None)
        if self.cycle.response_complete and not self.pipeline and not self.transport.is_closing():
            self._await_head()  # it was answered before its body was in (an error): the next may come

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and self not in self.guard.bodies and not self.transport.is_closing():
            self._await_head()

    def _await_head(self) -> None:
        self._awaiting_head = True
        self._head_bytes = 0
        self.guard.heads[self] = self.loop.time()

    def _authorized(self) -> bool:
        """Whether the head so far carries the daemon's token."""
        auth = self.guard.auth
        return any(name == b"authorization" and hmac.compare_digest(value, auth) for name, value in self.headers or ())

    def _refuse_head(self, authorized: bool) -> None:
        limit = MAX_HEAD_BYTES if authorized else UNAUTHENTICATED_HEAD_BYTES
        message = f"the request head is over {limit} bytes; send large data in the body"
        if not authorized:
            message += " (heads may be longer once a valid 'Authorization: Bearer <token>' header came)"
        body = json.dumps(error_envelope("PayloadTooLargeError", message)).encode()
        head = (f"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode() + body)
        self.transport.close()
        self._awaiting_head = False
        self.guard.heads.pop(self, None)


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for one server: its connections share ``guard``."""

    class DaemonHttpProtocol(GuardedHttpToolsProtocol):
        pass

    DaemonHttpProtocol.guard = guard
    return DaemonHttpProtocol


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. macOS refuses more than its per-process maximum: keep the soft one
            pass
    return target if soft == resource.RLIM_INFINITY else soft


class _Server(uvicorn.Server):
    """uvicorn's server, also running Den auth's heartbeats (:mod:`runhouse.server.den_auth`) on its loop."""

    def __init__(self, config: uvicorn.Config, den_auth: DenAuth) -> None:
        super().__init__(config)
        self.den_auth = den_auth

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.den_auth.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.den_auth.close()
        await super().shutdown(sockets)


def serve(
    port: int,
    host: str = HOST,
    tls: bool = False,
    max_body_bytes: int | None = None,
    max_connections: int | None = None,
    ray_address: str | None = None,
    node_ips: Sequence[str] = (),
) -> None:
    """Run the daemon in this process until SIGTERM/SIGINT (HTTPS with its own certificate when ``tls``).

    With ``ray_address`` (the head of a multi-node cluster's Ray, ``ip:port``) it is that cluster's head
    daemon, ``node_ips`` the cluster's node addresses (its own first): workers are placed on every node through Ray
    (:class:`~runhouse.server.ray_backend.RayBackend`).

    Bodies are capped at ``max_body_bytes`` and connections at ``max_connections`` (None: the defaults),
    lowered to what the open-file limit allows (raised to its hard limit first).
    """
    from runhouse.server.app import DEFAULT_MAX_BODY_BYTES, App
    from runhouse.server.runs import RunStore
    from runhouse.server.runtime import Runtime

    files = DaemonFiles.local(port)
    make_private(files)
    pid_file = Path(files.pid)
    open_files = raise_open_file_limit()
    allowed = max(64, open_files - max(_RESERVED_FILES, open_files // 4))
    max_connections = max_connections or DEFAULT_MAX_CONNECTIONS
    if max_connections > allowed:
        print(f"runhouse daemon: at most {allowed} connections (open-file limit {open_files})", file=sys.stderr)
        max_connections = allowed
    token = ensure_token(files)
    backend = None
    if ray_address:
        from runhouse.server.ray_backend import RayBackend

        backend = RayBackend(ray_address, list(node_ips) or [ray_address.rpartition(":")[0]])
    runtime = Runtime(Path(files.registry), backend, Path(files.autostop), RunStore.from_env(Path(files.runs)))
    den_auth = DenAuth.load(files.den_auth, runtime.status)
    app = App(runtime, token, max_body_bytes or DEFAULT_MAX_BODY_BYTES, den_auth)
    if tls:
        ensure_tls_cert(files, host)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(files.tls_cert) if tls else None,
        ssl_keyfile=str(files.tls_key) if tls else None,
        loop="uvloop",
        http=guarded_protocol(ConnectionGuard(max_connections, token)),
        ws="none",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        timeout_keep_alive=int(HEAD_TIMEOUT_S),
        backlog=_BACKLOG,
        proxy_headers=False,  # no proxies to trust, and the middleware costs per request
        server_header=False,
        date_header=False,
    )
    # Bound before any state file is written: a second daemon that finds the port taken exits here (uvicorn
    # logs why) and leaves the running daemon's pid file alone.
    sock = config.bind_socket()
    write_private(files.pid, str(os.getpid()))
    ray = [ray_address, list(node_ips)] if ray_address else None
    write_private(files.launch, json.dumps({"host": host, "tls": tls, "ray": ray}))
    try:
        _Server(config, den_auth).run(sockets=[sock])
    finally:
        if pid_file.exists() and pid_file.read_text() == str(os.getpid()):
            pid_file.unlink()


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _limit_from_env(parser: argparse.ArgumentParser, name: str) -> int | None:
    """The positive integer in the environment variable ``name``, or None when it is not set."""
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        return _positive_int(raw)
    except argparse.ArgumentTypeError:
        parser.error(f"{name}={raw!r} is not a positive integer")


def main() -> None:
    from runhouse.server.app import DEFAULT_MAX_BODY_BYTES, MAX_BODY_ENV

    parser = argparse.ArgumentParser(description="Run the runhouse daemon in the foreground.")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--host", default=HOST, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with the daemon's own certificate")
    parser.add_argument("--max-body-bytes", type=_positive_int, default=None,
                        help=f"largest request body accepted (default {DEFAULT_MAX_BODY_BYTES}, or ${MAX_BODY_ENV})")
    parser.add_argument("--max-connections", type=_positive_int, default=None,
                        help=f"most connections open at once (default {DEFAULT_MAX_CONNECTIONS}, or "
                             f"${MAX_CONNECTIONS_ENV})")
    parser.add_argument("--ray-address", default=None, help="the head of this multi-node cluster's Ray (ip:port)")
    parser.add_argument("--node-ips", default="", help="the cluster's node addresses, this one first (a,b,c)")
    args = parser.parse_args()
    serve(
        args.port or default_server_port(),
        args.host,
        args.tls,
        args.max_body_bytes or _limit_from_env(parser, MAX_BODY_ENV),
        args.max_connections or _limit_from_env(parser, MAX_CONNECTIONS_ENV),
        args.ray_address,
        [ip for ip in args.node_ips.split(",") if ip],
    )


if __name__ == "__main__":
    main()
