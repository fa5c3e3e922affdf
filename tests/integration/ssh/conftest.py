"""A real OpenSSH server on a free loopback port, with its own host key and client key, for the SSH tests.

Nothing the tests do over SSH touches the real home folder: sessions get ``HOME`` (and ``RH_CONFIG_DIR``)
in a temporary folder, and start there (sshd itself would start them in the account's home folder).
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from runhouse.transport.ssh import SSHCredentials
from tests.conftest import free_port

SSHD = Path("/usr/sbin/sshd")
# A program, not sshd's built-in internal-sftp: the ForceCommand below would otherwise swallow sftp (and scp).
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
START_TIMEOUT_S = 10.0

# sshd runs every session in the account's home folder and SetEnv only changes the HOME variable, so the
# session first moves into $HOME, then runs the command (or a login shell) with the user's shell, as sshd would.
_INTO_HOME = (
    'cd "$HOME" || exit 1; '
    'if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec "$SHELL" -c "$SSH_ORIGINAL_COMMAND"; else exec "$SHELL" -l; fi'
)


def generate_key(path: Path) -> Path:
    """A new passphrase-less ed25519 key pair at ``path`` and ``path.pub``."""
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(path)], check=True, timeout=30)
    return path


class SSHServer:
    """An ``sshd -D`` on 127.0.0.1:port that accepts ``private_key`` for the current user."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = getpass.getuser()
        self.home = root / "home"
        self.home.mkdir()
        self.host_key = generate_key(root / "host_key")
        self.private_key = generate_key(root / "client_key")
        authorized_keys = root / "authorized_keys"
        authorized_keys.write_text(self.private_key.with_suffix(".pub").read_text())
        self.known_hosts = root / "known_hosts"  # starts empty: the host is unknown
        self.known_hosts.touch()
        self.log = root / "sshd.log"
        self.config = root / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
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
                    f'SetEnv HOME="{self.home}" RH_CONFIG_DIR="{self.home / ".rh"}"',
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

    def known_hosts_with_key(self, path: Path | None = None) -> Path:
        """A known_hosts file that already trusts this server (default: one next to the server's files)."""
        path = path or self.root / "known_hosts_trusted"
        path.write_text(f"[{self.host}]:{self.port} {self.host_public_key}\n")
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
        raise RuntimeError(f"sshd did not listen on port {self.port} in {START_TIMEOUT_S} s:\n{self.log.read_text()}")

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

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory, config_dir: Path) -> Iterator[SSHServer]:
    """A running sshd for the whole session; tests that kill it restart it before they end."""
    if not SSHD.exists():
        pytest.skip(f"{SSHD} not found: install the OpenSSH server (`apt-get install openssh-server`)")
    # sshd refuses to start without its privilege separation folder; Debian creates it only at boot.
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    server = SSHServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def second_sshd(sshd: SSHServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """Another running sshd (its own port, keys and home folder) for tests that need two hosts; ``sshd`` first
    checks that OpenSSH is installed and prepares its folder."""
    server = SSHServer(tmp_path_factory.mktemp("sshd2"))
    server.start()
    try:
        yield server
    finally:
        server.kill()
