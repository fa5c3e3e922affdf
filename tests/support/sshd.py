"""Real OpenSSH servers for the SSH and multi-node tests, each with its own host key, home folder and runhouse
folder: one on a free loopback port (:class:`SSHServer`), or several "nodes" on loopback aliases 127.0.0.2, 127.0.0.3,
... all on the same port and logged into with one client key (:class:`LoopbackNodes`).

Nothing the tests do over SSH touches the real home folder: sessions get ``HOME`` (and ``RH_CONFIG_DIR``)
in a temporary folder, and start there (sshd itself would start them in the account's home folder).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from runhouse.transport.ssh import SSHCredentials

SSHD = Path("/usr/sbin/sshd")
# A program, not sshd's built-in internal-sftp: the ForceCommand below would otherwise swallow sftp (and scp).
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
START_TIMEOUT_S = 10.0

# sshd runs every session in the account's home folder and SetEnv only changes the HOME variable, so the
# session first moves into $HOME, then runs the command (or a login shell) with the user's shell, as sshd would.
# Installers on the "remote" side trust the same CA bundle as the tests (a proxy's CA on some machines).
_CA_BUNDLE = f' SSL_CERT_FILE="{os.environ["SSL_CERT_FILE"]}"' if os.environ.get("SSL_CERT_FILE") else ""
_INTO_HOME = (
    'cd "$HOME" || exit 1; '
    'if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec "$SHELL" -c "$SSH_ORIGINAL_COMMAND"; else exec "$SHELL" -l; fi'
)


def generate_key(path: Path) -> Path:
    """A new passphrase-less ed25519 key pair at ``path`` and ``path.pub``."""
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(path)], check=True, timeout=30)
    return path


def free_port_on(*hosts: str, attempts: int = 100) -> int:
    """A TCP port that is free on every one of ``hosts`` (default: 127.0.0.1), found by binding it on each."""
    hosts = hosts or ("127.0.0.1",)
    for _ in range(attempts):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port: int = first.getsockname()[1]
            if all(_bindable(host, port) for host in hosts[1:]):
                return port
    raise RuntimeError(f"no port free on all of {', '.join(hosts)} after {attempts} attempts")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class SSHServer:
    """An ``sshd -D`` on host:port (default 127.0.0.1 and a free port) that accepts ``private_key`` for the
    current user.

    ``host_key`` and ``client_key`` (private key paths, the ``.pub`` next to them) default to new keys in ``root``;
    pass one ``client_key`` to several servers to log into all of them with it.
    """

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        host_key: Path | None = None,
        client_key: Path | None = None,
    ) -> None:
        self.root = root
        self.host = host
        self.port = port if port is not None else free_port_on(host)
        self.user = getpass.getuser()
        self.home = root / "home"
        self.home.mkdir()
        self.host_key = host_key or generate_key(root / "host_key")
        self.private_key = client_key or generate_key(root / "client_key")
        authorized_keys = root / "authorized_keys"
        authorized_keys.write_text(self.private_key.with_suffix(".pub").read_text())
        self.known_hosts = root / "known_hosts"  # starts empty: the host is unknown
        self.known_hosts.touch()
        self.log = root / "sshd.log"
        self.config = root / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.host}",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized_keys}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin yes",  # the tests may run as root
                    "StrictModes no",  # temporary folders are not owned the way sshd wants
                    "UsePAM no",
                    "PermitUserRC no",  # do not run the real ~/.ssh/rc
                    "PrintMotd no",
                    "PrintLastLog no",
                    f"Subsystem sftp {SFTP_SERVER if SFTP_SERVER.exists() else 'internal-sftp'}",
                    f'SetEnv HOME="{self.home}" RH_CONFIG_DIR="{self.home / ".rh"}"{_CA_BUNDLE}',
                    f"ForceCommand {_INTO_HOME}",
                    "",
                ]
            )
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host_public_key(self) -> str:
        """The server's host key as ``type base64``, the way known_hosts lists it."""
        return " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])

    @property
    def known_hosts_line(self) -> str:
        """This server's known_hosts line: ``[host]:port type base64``."""
        return f"[{self.host}]:{self.port} {self.host_public_key}"

    def known_hosts_with_key(self, path: Path | None = None) -> Path:
        """A known_hosts file that already trusts this server (default: one next to the server's files)."""
        path = path or self.root / "known_hosts_trusted"
        path.write_text(self.known_hosts_line + "\n")
        return path

    def creds(self, **overrides: Any) -> SSHCredentials:
        """Credentials for this server, checking its key against a known_hosts file that already has it."""
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "private_key": str(self.private_key),
            "known_hosts": str(self.known_hosts_with_key()),
        }
        return SSHCredentials(**{**values, **overrides})

    def start(self) -> None:
        """Start sshd and wait until its port accepts connections."""
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"sshd exited with code {self._process.returncode}:\n{self.log.read_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"sshd did not listen on {self.host}:{self.port} in {START_TIMEOUT_S} s:\n{self.log.read_text()}"
        )

    def kill(self) -> None:
        """Kill sshd and every session it runs, as if the host went down (connections drop at once)."""
        if self._process is None:
            return
        try:
            family = [*psutil.Process(self._process.pid).children(recursive=True), psutil.Process(self._process.pid)]
        except psutil.NoSuchProcess:
            family = []
        for proc in family:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        self._process.wait(timeout=5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(proc) for proc in family):
            time.sleep(0.01)
        self._process = None

    def freeze(self) -> None:
        """Stop (SIGSTOP) sshd and its sessions: a host that no longer answers but closes no connection.

        Undo with :meth:`restart`.
        """
        assert self._process is not None
        listener = psutil.Process(self._process.pid)
        for proc in [listener, *listener.children(recursive=True)]:
            try:
                proc.suspend()
            except psutil.NoSuchProcess:
                continue

    def restart(self) -> None:
        """Kill sshd (and its sessions) and start it again on the same port with the same host key."""
        self.kill()
        self.start()

    @property
    def pid(self) -> int | None:
        """The sshd listener's pid while it runs."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class LoopbackNodes:
    """``count`` sshd "nodes" on 127.0.0.2 .. 127.0.0.(count+1), all on one port free on every one of them,
    each with its own host key, home folder and ``RH_CONFIG_DIR`` (``<home>/.rh``), all accepting one client key.

    ``known_hosts`` trusts every node. Files go in ``root`` (default: a temporary folder, removed by :meth:`stop`).
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, count: int, root: Path | None = None) -> None:
        if not 1 <= count <= 253:
            raise ValueError(f"count must be 1-253 (loopback aliases 127.0.0.2-127.0.0.254), not {count}")
        self._own_root = root is None
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="rh-nodes-"))
        self._ips = [f"127.0.0.{i}" for i in range(2, count + 2)]
        self._port = free_port_on(*self._ips)
        self._private_key = generate_key(self.root / "client_key")
        self._servers: list[SSHServer] = []
        for ip in self._ips:
            node_root = self.root / ip
            node_root.mkdir()
            self._servers.append(SSHServer(node_root, host=ip, port=self._port, client_key=self._private_key))
        self._known_hosts = self.root / "known_hosts"
        self._known_hosts.write_text("".join(server.known_hosts_line + "\n" for server in self._servers))

    @property
    def ips(self) -> list[str]:
        """The nodes' addresses, in order."""
        return list(self._ips)

    @property
    def port(self) -> int:
        """The SSH port every node listens on."""
        return self._port

    @property
    def user(self) -> str:
        return self._servers[0].user

    @property
    def private_key(self) -> Path:
        """The one client key every node accepts."""
        return self._private_key

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file with every node's host key (``[ip]:port type base64``)."""
        return self._known_hosts

    @property
    def servers(self) -> list[SSHServer]:
        """The nodes' servers, in the order of :attr:`ips`."""
        return list(self._servers)

    @property
    def homes(self) -> list[Path]:
        """The nodes' home folders, in the order of :attr:`ips`."""
        return [server.home for server in self._servers]

    def node(self, i: int) -> SSHServer:
        """The server of node ``i`` (0-based, at ``ips[i]``)."""
        return self._servers[i]

    def ssh_creds(self) -> dict[str, Any]:
        """The ``ssh_creds`` runhouse takes for a cluster of these nodes (one login for every ip)."""
        return {
            "ssh_user": self.user,
            "ssh_private_key": str(self._private_key),
            "ssh_port": self._port,
            "known_hosts": str(self._known_hosts),
        }

    def start(self) -> LoopbackNodes:
        """Start every node's sshd and wait until each accepts connections (on failure, stop the started ones)."""
        try:
            for server in self._servers:
                server.start()
        except BaseException:
            self._kill_all()
            raise
        return self

    def stop(self) -> None:
        """Kill every node's sshd and sessions; remove the files if the folder was made here."""
        self._kill_all()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_all(self) -> None:
        for server in self._servers:
            server.kill()

    def __enter__(self) -> LoopbackNodes:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
