"""The daemon process: run it in the foreground until SIGTERM (``python -c "...daemon import main; main()"``).

Its state files are :class:`~runhouse.daemon_files.DaemonFiles`; clients start and stop it with
:mod:`runhouse.resources.clusters.local_daemon`, which spawns this module's :func:`main` as a new process.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from runhouse.daemon_files import DaemonFiles, ensure_tls_cert, ensure_token
from runhouse.paths import default_server_port
from runhouse.protocol import DEFAULT_BIND_HOST as HOST


def serve(port: int, host: str = HOST, tls: bool = False) -> None:
    """Run the daemon in this process until SIGTERM/SIGINT (HTTPS with its own certificate when ``tls``)."""
    import uvicorn

    from runhouse.server.app import App
    from runhouse.server.runtime import Runtime

    files = DaemonFiles.local(port)
    pid_file = Path(files.pid)
    pid_file.write_text(str(os.getpid()))
    Path(files.launch).write_text(json.dumps({"host": host, "tls": tls}))
    app = App(Runtime(Path(files.registry)), ensure_token(files))
    if tls:
        ensure_tls_cert(files, host)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(files.tls_cert) if tls else None,
        ssl_keyfile=str(files.tls_key) if tls else None,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        timeout_keep_alive=300,
        proxy_headers=False,  # no proxies to trust, and the middleware costs per request
        server_header=False,
        date_header=False,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        if pid_file.exists() and pid_file.read_text() == str(os.getpid()):
            pid_file.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the runhouse daemon in the foreground.")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--host", default=HOST, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with the daemon's own certificate")
    args = parser.parse_args()
    serve(args.port or default_server_port(), args.host, args.tls)


if __name__ == "__main__":
    main()
