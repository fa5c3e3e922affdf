"""The daemon on this machine, seen from the client side: start it in the background, stop it, find it.

Its files (token, pid, log, launch options) are :class:`~runhouse.daemon_files.DaemonFiles`; the process
itself runs :func:`runhouse.server.daemon.main`, started here as a new process, never imported.

A port belongs to the daemon of one config folder (``RH_CONFIG_DIR``): the one whose pid file names the
process that answers there. When another process holds it (a daemon of another config folder, or a program
that is not runhouse), :func:`other_daemon` and :func:`port_in_use` say which one and what to do.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from runhouse import daemon_files
from runhouse.daemon_files import DaemonFiles, ensure_tls_cert, ensure_token
from runhouse.errors import DaemonStartError
from runhouse.lifetime import terminate_process
from runhouse.paths import config_dir, config_dir_of, default_server_port
from runhouse.protocol import DEFAULT_BIND_HOST as HOST
from runhouse.transport.client import health, pinned_ssl_context

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 30
# The daemon's entry point, run with ``python -c`` in a session of its own.
_DAEMON_MODULE = "runhouse.server.daemon"
_BOOT = f"from {_DAEMON_MODULE} import main; main()"
_OTHER_PORT = "or use another port (`runhouse start --port N`, $RH_SERVER_PORT, or server_port=N)"


def read_token(port: int) -> str | None:
    """The token of the daemon on ``port`` of this machine, or None before its first start."""
    return daemon_files.read_token(DaemonFiles.local(port))


class RayOptions(NamedTuple):
    """How a daemon joins its multi-node cluster's Ray: the head's ``ip:port`` and the cluster's node
    addresses (its own first)."""

    address: str
    node_ips: list[str]


def launch_options(port: int) -> tuple[str, bool, RayOptions | None]:
    """How the daemon on ``port`` was last started (bound address, TLS, Ray), to restart it the same way."""
    try:
        options = json.loads(Path(DaemonFiles.local(port).launch).read_text())
        ray = options.get("ray")
        return str(options["host"]), bool(options["tls"]), RayOptions(*ray) if ray else None
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return HOST, False, None


def running_pid(port: int) -> int | None:
    """Pid of this config folder's daemon on ``port`` if it is running.

    A pid file left behind (the machine rebooted, the daemon was killed) may name a process that is not a
    daemon by now: that one is not returned, so it is never signalled.
    """
    try:
        pid = int(Path(DaemonFiles.local(port).pid).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _is_daemon(pid) else None


def log_tail(port: int, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the daemon's log."""
    try:
        return "\n".join(Path(DaemonFiles.local(port).log).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def start(
    port: int | None = None,
    timeout: float = START_TIMEOUT_S,
    host: str = HOST,
    tls: bool = False,
    ray: RayOptions | None = None,
) -> int:
    """Start the daemon in the background (if not already answering) and wait until it is ready.

    With ``tls``, it serves HTTPS with its own certificate (made at first start) on ``host``, for clients
    that reach it directly rather than through an SSH tunnel. With ``ray``, it is the head daemon of a
    multi-node cluster: its workers go on every node of that Ray cluster.

    Returns:
        The daemon's pid.

    Raises:
        DaemonStartError: another process holds the port (the message names it), or the daemon exited or did
            not answer within ``timeout`` (carries the end of its log).
    """
    port = port or default_server_port()
    files = DaemonFiles.local(port)
    context = pinned_ssl_context(ensure_tls_cert(files, host).read_text()) if tls else None
    probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    answer = health(port, probe, ssl_context=context)
    if answer is not None:
        taken = other_daemon(port, answer)
        if taken is not None:
            raise DaemonStartError(taken)
        return int(answer["pid"])
    taken = port_in_use(port, host, tls)
    if taken is not None:
        raise DaemonStartError(taken)
    ensure_token(files)
    with daemon_files.open_log(files) as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, "--port", str(port), "--host", host, *(["--tls"] if tls else []),
             *(["--ray-address", ray.address, "--node-ips", ",".join(ray.node_ips)] if ray else [])],
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


def other_daemon(port: int, answer: Mapping[str, Any]) -> str | None:
    """What to tell a user when the daemon that answered on ``port`` is not this config folder's, else None.

    ``answer`` is its ``/health``; it is this folder's when this folder's pid file names it, or when it was
    started with this folder (a concurrent start may have left it without a pid file).
    """
    pid = int(answer["pid"])
    if pid == running_pid(port) or (_is_daemon(pid) and _config_folder_of(pid) == config_dir().resolve()):
        return None
    return _held_by_daemon(port, pid)


def port_in_use(port: int, host: str = HOST, tls: bool = False) -> str | None:
    """Why a daemon could not listen on ``host:port`` now, naming the process that holds it; None if it could.

    ``tls`` is how the caller expected the daemon of this config folder to answer, for when that one holds
    the port but did not answer that way.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon binds
            probe.bind(address)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return f"the daemon cannot listen on {host}:{port}: {exc.strerror or exc}; use another address or port"
        return _held_by(port, host, tls)
    return None


def _held_by(port: int, host: str, tls: bool) -> str:
    """Who listens on ``port`` (bound a moment ago) and what to do about it."""
    said = f"{host}:{port}: address already in use"
    pid = _listener(port)
    if pid is None:
        return f"{said} by a process this user cannot see; stop it {_OTHER_PORT}"
    if pid == running_pid(port):
        started_tls = launch_options(port)[1]
        if started_tls != tls:
            how = "with" if started_tls else "without"
            return (
                f"{said} by this config folder's daemon (pid {pid}), started {how} --tls; stop it "
                f"(`runhouse stop --port {port}`) and start it again the way you want it"
            )
        return (
            f"{said} by this config folder's daemon (pid {pid}), which does not answer its health check; see its "
            f"log ({DaemonFiles.local(port).log}) and restart it (`runhouse restart --port {port}`)"
        )
    if _is_daemon(pid):
        return _held_by_daemon(port, pid)
    return f"{said} by pid {pid} ({_command_line(pid)}), which is not a runhouse daemon; stop it {_OTHER_PORT}"


def _held_by_daemon(port: int, pid: int) -> str:
    """The message for a runhouse daemon on ``port`` that this config folder's pid file does not name."""
    ours = config_dir().resolve()
    folder = _config_folder_of(pid)
    if folder is None:
        return (
            f"port {port} is held by another runhouse daemon (pid {pid}) started with another config folder "
            f"(RH_CONFIG_DIR) than this one ({ours}); stop it (`kill {pid}`) {_OTHER_PORT}"
        )
    if folder == ours:
        return (
            f"port {port} is held by a runhouse daemon (pid {pid}) of this config folder ({ours}) that its pid "
            f"file does not name; stop it (`kill {pid}`) and start it again (`runhouse start --port {port}`)"
        )
    return (
        f"port {port} is held by another runhouse daemon (pid {pid}) started with another config folder ({folder}, "
        f"this one is {ours}); stop it (`RH_CONFIG_DIR={folder} runhouse stop --port {port}`) {_OTHER_PORT}"
    )


def _listener(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` here (None when this user cannot see it)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
            return connection.pid
    return None


def _is_daemon(pid: int) -> bool:
    """Whether ``pid`` is a running runhouse daemon (of any config folder)."""
    try:
        return any(_DAEMON_MODULE in part for part in psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def _command_line(pid: int, limit: int = 80) -> str:
    try:
        line = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return "command line not readable"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _config_folder_of(pid: int) -> Path | None:
    """The runhouse folder of the daemon ``pid`` (from its environment), or None when it cannot be read."""
    try:
        return config_dir_of(psutil.Process(pid).environ()).resolve()
    except (psutil.Error, KeyError):
        return None


def running_ports() -> list[int]:
    """The ports this config folder's daemons run on now."""
    folder = config_dir() / "daemons"
    ports = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    return [port for port in ports if running_pid(port) is not None]


def stop(port: int | None = None, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the daemon and its workers; returns False if it was not running."""
    port = port or default_server_port()
    pid = running_pid(port)
    if pid is None:
        return False
    terminate_process(pid, timeout)
    Path(DaemonFiles.local(port).pid).unlink(missing_ok=True)
    return True

