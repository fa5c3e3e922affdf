"""The daemon on this machine, seen from the client side: start it in the background, stop it, find it.

Its files (token, pid, log, launch options) are :class:`~runhouse.daemon_files.DaemonFiles`; the process
itself runs :func:`runhouse.server.daemon.main`, started here as a new process, never imported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runhouse import daemon_files
from runhouse.daemon_files import DaemonFiles, ensure_tls_cert, ensure_token
from runhouse.errors import DaemonStartError
from runhouse.paths import default_server_port
from runhouse.protocol import DEFAULT_BIND_HOST as HOST
from runhouse.transport.client import health, pinned_ssl_context

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 30
# The daemon's entry point, run with ``python -c`` in a session of its own.
_BOOT = "from runhouse.server.daemon import main; main()"


def read_token(port: int) -> str | None:
    """The token of the daemon on ``port`` of this machine, or None before its first start."""
    return daemon_files.read_token(DaemonFiles.local(port))


def launch_options(port: int) -> tuple[str, bool]:
    """How the daemon on ``port`` was last started: bound address and TLS, for restarting it the same way."""
    try:
        options = json.loads(Path(DaemonFiles.local(port).launch).read_text())
        return str(options["host"]), bool(options["tls"])
    except (FileNotFoundError, ValueError, KeyError):
        return HOST, False


def running_pid(port: int) -> int | None:
    """Pid of the daemon on ``port`` if it is running."""
    try:
        pid = int(Path(DaemonFiles.local(port).pid).read_text())
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
    """The last ``lines`` lines of the daemon's log."""
    try:
        return "\n".join(Path(DaemonFiles.local(port).log).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def start(port: int | None = None, timeout: float = START_TIMEOUT_S, host: str = HOST, tls: bool = False) -> int:
    """Start the daemon in the background (if not already answering) and wait until it is ready.

    With ``tls``, it serves HTTPS with its own certificate (made at first start) on ``host``, for clients
    that reach it directly rather than through an SSH tunnel.

    Returns:
        The daemon's pid.

    Raises:
        DaemonStartError: it exited or did not answer within ``timeout``; carries the end of its log.
    """
    port = port or default_server_port()
    files = DaemonFiles.local(port)
    context = pinned_ssl_context(ensure_tls_cert(files, host).read_text()) if tls else None
    probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    answer = health(port, probe, ssl_context=context)
    if answer is not None:
        return int(answer["pid"])
    ensure_token(files)
    with daemon_files.open_log(files) as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, "--port", str(port), "--host", host, *(["--tls"] if tls else [])],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal that started it
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonStartError(f"the daemon on port {port} exited with code {proc.returncode}", log_tail(port))
        if health(port, probe, timeout=0.2, ssl_context=context) is not None:
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
    Path(DaemonFiles.local(port).pid).unlink(missing_ok=True)
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
