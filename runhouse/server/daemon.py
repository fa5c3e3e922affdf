"""The daemon process on this machine: run it, start it in the background, stop it, find its token.

State of the daemon on port P lives in ``~/.rh/daemons/P/``: ``token`` (0600, made at first start and kept
across restarts), ``pid``, ``daemon.log`` and ``registry.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from runhouse.errors import DaemonStartError
from runhouse.paths import daemon_dir, default_server_port

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HEALTH_TIMEOUT_S = 0.5
_LOG_TAIL_LINES = 30


def token_path(port: int) -> Path:
    return daemon_dir(port) / "token"


def ensure_token(port: int) -> str:
    """The daemon's token, created with mode 0600 if it does not exist yet."""
    path = token_path(port)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def read_token(port: int) -> str | None:
    try:
        return token_path(port).read_text().strip()
    except FileNotFoundError:
        return None


def health(port: int, host: str = HOST, timeout: float = HEALTH_TIMEOUT_S) -> dict | None:
    """The daemon's ``/health`` answer, or None when nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        return json.loads(response.read()) if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def running_pid(port: int) -> int | None:
    """Pid of the daemon on ``port`` if it is running."""
    try:
        pid = int((daemon_dir(port) / "pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def log_tail(port: int, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        return "\n".join((daemon_dir(port) / "daemon.log").read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def start(port: int | None = None, timeout: float = START_TIMEOUT_S) -> int:
    """Start the daemon in the background (if not already answering) and wait until it is ready.

    Returns:
        The daemon's pid.

    Raises:
        DaemonStartError: it exited or did not answer within ``timeout``; carries the end of its log.
    """
    port = port or default_server_port()
    answer = health(port)
    if answer is not None:
        return int(answer["pid"])
    ensure_token(port)
    log = open(daemon_dir(port) / "daemon.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from runhouse.server.daemon import main; main()", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # survives the terminal that started it
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonStartError(f"the daemon on port {port} exited with code {proc.returncode}", log_tail(port))
        if health(port, timeout=0.2) is not None:
            return proc.pid
        time.sleep(0.01)
    proc.kill()
    raise DaemonStartError(f"the daemon on port {port} did not answer within {timeout} s", log_tail(port))


def stop(port: int | None = None, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the daemon and its workers; returns False if it was not running."""
    port = port or default_server_port()
    pid = running_pid(port)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.02)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    (daemon_dir(port) / "pid").unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie that is not our child counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def serve(port: int) -> None:
    """Run the daemon in this process until SIGTERM/SIGINT."""
    import uvicorn

    from runhouse.server.app import App
    from runhouse.server.objects import Runtime

    state = daemon_dir(port)
    pid_file = state / "pid"
    pid_file.write_text(str(os.getpid()))
    app = App(Runtime(state), ensure_token(port))
    config = uvicorn.Config(
        app,
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        timeout_keep_alive=300,
        proxy_headers=False,  # bound to 127.0.0.1: no proxies to trust, and the middleware costs per request
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
    serve(parser.parse_args().port or default_server_port())


if __name__ == "__main__":
    main()
