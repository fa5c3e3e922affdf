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
import ssl
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


def tls_paths(port: int) -> tuple[Path, Path]:
    """Certificate and private key the daemon on ``port`` serves HTTPS with (``--tls``)."""
    folder = daemon_dir(port) / "tls"
    return folder / "cert.pem", folder / "key.pem"


def ensure_tls_cert(port: int, host: str) -> Path:
    """A self-signed certificate for the daemon, made once (key mode 0600); clients pin it, no CA involved."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = tls_paths(port)
    if cert_path.exists() and key_path.exists():
        return cert_path
    cert_path.parent.mkdir(mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runhouse daemon")])
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def pinned_ssl_context(cert_pem: str) -> ssl.SSLContext:
    """A client TLS context that trusts exactly one certificate (the daemon's, fetched over SSH)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the pinned certificate itself is the identity
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=cert_pem)
    return context


def health(
    port: int, host: str = HOST, timeout: float = HEALTH_TIMEOUT_S, ssl_context: ssl.SSLContext | None = None
) -> dict | None:
    """The daemon's ``/health`` answer, or None when nothing answers."""
    conn: http.client.HTTPConnection
    if ssl_context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl_context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        return json.loads(response.read()) if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def launch_options(port: int) -> tuple[str, bool]:
    """How the daemon on ``port`` was last started: bound address and TLS, for restarting it the same way."""
    try:
        options = json.loads((daemon_dir(port) / "launch.json").read_text())
        return str(options["host"]), bool(options["tls"])
    except (FileNotFoundError, ValueError, KeyError):
        return HOST, False


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
    context = pinned_ssl_context(ensure_tls_cert(port, host).read_text()) if tls else None
    probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    answer = health(port, probe, ssl_context=context)
    if answer is not None:
        return int(answer["pid"])
    ensure_token(port)
    log = open(daemon_dir(port) / "daemon.log", "ab")
    argv = [sys.executable, "-c", "from runhouse.server.daemon import main; main()", "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--host", host, *(["--tls"] if tls else [])],
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


def serve(port: int, host: str = HOST, tls: bool = False) -> None:
    """Run the daemon in this process until SIGTERM/SIGINT (HTTPS with its own certificate when ``tls``)."""
    import uvicorn

    from runhouse.server.app import App
    from runhouse.server.objects import Runtime

    state = daemon_dir(port)
    pid_file = state / "pid"
    pid_file.write_text(str(os.getpid()))
    (state / "launch.json").write_text(json.dumps({"host": host, "tls": tls}))
    app = App(Runtime(state), ensure_token(port))
    cert, key = tls_paths(port)
    if tls:
        ensure_tls_cert(port, host)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(cert) if tls else None,
        ssl_keyfile=str(key) if tls else None,
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
