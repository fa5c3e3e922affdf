"""Clusters you bring yourself, reached over SSH: the daemon is brought up there and reached by a tunnel.

On first use the host gets runhouse installed (the client's own build: a wheel made here, with its
dependencies, copied over and installed into a venv named by the build id, so a second bring-up installs
nothing) and the daemon started bound to 127.0.0.1 in a session of its own, so it outlives the SSH
connection. Every operation shares one multiplexed SSH connection; calls go through a local port forward
that is re-opened if it drops. ``.to(cluster)`` first syncs the working git repo (what git does not ignore;
only changed files; nothing at all when the tree is unchanged) and installs its ``requirements.txt``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import shlex
import ssl
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runhouse import __version__
from runhouse.errors import ClusterUnreachableError, ClusterVersionError, DaemonStartError, HostKeyError
from runhouse.paths import DEFAULT_SERVER_PORT, config_dir
from runhouse.prompts import ask_yes_no
from runhouse.resources.cluster import Cluster, print_log
from runhouse.rns.local_store import repo_root
from runhouse.transport.client import DaemonClient, Response, health, pinned_ssl_context
from runhouse.transport.ssh import SSHConnection, SSHCredentials, Tunnel
from runhouse.version import PACKAGE_DIR, build_id

INSTALL_TIMEOUT_S = 900.0
START_TIMEOUT_S = 60.0
SYNC_TIMEOUT_S = 600.0
# An SSH cluster does not wait for refused connections: it re-opens its tunnel instead.
_TUNNEL_RECONNECT_WINDOW_S = 0.2
_REMOTE_STATE = '"${RH_CONFIG_DIR:-$HOME/.rh}"'
_TREE_MARKER = ".rh-tree-hash"

if TYPE_CHECKING:
    from runhouse.resources.data.base import DataSystem


class SSHCluster(Cluster):
    """A machine you bring, reached over SSH (``ips`` and ``ssh_creds``).

    Example::

        gpu = rh.cluster(name="rh-a10x", ips=["10.0.0.5"],
                         ssh_creds={"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_ed25519"})
        gpu.up_if_not()
    """

    def __init__(
        self,
        name: str | None = None,
        ips: Sequence[str] = (),
        ssh_creds: Mapping[str, Any] | None = None,
        server_port: int | None = None,
        server_connection_type: str = "ssh",
        accept_new_host_keys: bool = False,
        allow_upgrade: bool = True,
        token: str | None = None,
    ) -> None:
        if not ips:
            raise ValueError("an SSH cluster needs ips=[...] (the first is the head node)")
        if server_connection_type not in ("ssh", "tls"):
            raise ValueError(
                f"server_connection_type={server_connection_type!r}: use 'ssh' (an SSH tunnel, the default) or "
                "'tls' (HTTPS straight to the daemon, its certificate pinned)"
            )
        super().__init__(name=name, host=ips[0], server_port=server_port or DEFAULT_SERVER_PORT, token=token)
        self.ips = list(ips)
        self.ssh_creds = dict(ssh_creds or {})
        self.server_connection_type = server_connection_type
        self.accept_new_host_keys = accept_new_host_keys
        self.allow_upgrade = allow_upgrade
        self.creds = SSHCredentials.from_dict(
            ips[0], {**self.ssh_creds, "accept_new_host_keys": accept_new_host_keys}
        )
        self._ssh: SSHConnection | None = None
        self._tunnel: Tunnel | None = None
        self._remote_state: str | None = None
        self._synced: dict[str, str] = {}  # local repo -> tree hash known to be on the host
        self._ssl_context: ssl.SSLContext | None = None

    # --- connection ----------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return False

    @property
    def ssh_connection(self) -> SSHConnection:
        """The one multiplexed SSH connection to the head node."""
        if self._ssh is None:
            self._ssh = SSHConnection(self.creds)
        return self._ssh

    def _open_tunnel(self) -> Tunnel:
        if self._tunnel is None or not self._tunnel.is_open():
            if self._tunnel is not None:
                self._tunnel.close()
            self._tunnel = self.ssh_connection.forward(self.server_port)
            self._client = None  # the local port changed
        return self._tunnel

    @property
    def uses_tls(self) -> bool:
        return self.server_connection_type == "tls"

    def _endpoint(self) -> tuple[str, int]:
        if self.uses_tls:
            return self.host, self.server_port
        return "127.0.0.1", self._open_tunnel().local_port

    def _pinned_context(self) -> ssl.SSLContext | None:
        """TLS context trusting exactly the daemon's certificate, read over SSH (None until it exists)."""
        if self.uses_tls and self._ssl_context is None:
            result = self.ssh_connection.run(f"cat {self._state()}/daemons/{self.server_port}/tls/cert.pem", timeout=30)
            if result.returncode == 0 and "BEGIN CERTIFICATE" in result.stdout:
                self._ssl_context = pinned_ssl_context(result.stdout)
        return self._ssl_context

    @property
    def client(self) -> DaemonClient:
        if self._client is None:
            host, port = self._endpoint()
            token = self._token or self._remote_token()
            self._client = DaemonClient(
                host, port, token, reconnect_window=_TUNNEL_RECONNECT_WINDOW_S, ssl_context=self._pinned_context()
            )
        return self._client

    def _state(self) -> str:
        """The runhouse folder on the host (absolute)."""
        if self._remote_state is None:
            result = self.ssh_connection.run(f"echo {_REMOTE_STATE}", timeout=30, check=True)
            self._remote_state = result.stdout.strip()
        return self._remote_state

    def _remote_token(self) -> str | None:
        result = self.ssh_connection.run(f"cat {self._state()}/daemons/{self.server_port}/token", timeout=30)
        return result.stdout.strip() or None

    def _health(self) -> dict | None:
        host, port = self._endpoint()
        if self.uses_tls and self._pinned_context() is None:
            return None  # never started with TLS here: no certificate yet
        return health(port, host, timeout=2.0, ssl_context=self._pinned_context())

    def is_up(self) -> bool:
        return self._health() is not None

    def up_if_not(self) -> SSHCluster:
        """Connect; install runhouse and start the daemon on the host when it is not answering."""
        if self._checked_up:
            return self
        self._connect()
        answer = self._health()
        if answer is None:
            self._bring_up()
        elif answer.get("build") != build_id():
            if not self.allow_upgrade:
                raise ClusterVersionError(
                    f"the daemon on {self.host} runs runhouse {answer.get('build')}, this client is {build_id()}; "
                    "pass allow_upgrade=True to replace it, or use the matching runhouse here"
                )
            print_log(self.host)(f"upgrading the daemon from {answer.get('build')} to {build_id()}\n".encode())
            self._stop_remote_daemon()
            self._bring_up()
        self._client = None
        self._checked_up = True
        return self

    def _connect(self) -> None:
        """Open the SSH connection; an unknown host key may be accepted at a prompt (never a changed one)."""
        try:
            self.ssh_connection.check()
        except HostKeyError as exc:
            if exc.changed or self.accept_new_host_keys or not sys.stdin.isatty():
                raise
            if not ask_yes_no(f"{exc}\nAccept the host key of {self.creds.address} and record it? [y/N] "):
                raise
            self.accept_new_host_keys = True
            self.creds = dataclasses.replace(self.creds, accept_new_host_keys=True)
            self._ssh = None
            self.ssh_connection.check()

    def request(self, path: str, meta: dict[str, Any] | None = None, parts: Sequence[Any] = (),
                on_log: Any = None, timeout: float | None = 60.0) -> Response:
        try:
            return super().request(path, meta, parts, on_log, timeout)
        except ClusterUnreachableError as exc:
            if getattr(exc, "request_sent", True):
                raise  # it may have reached user code: never resent
        # Refused before anything was sent: the tunnel or the daemon went away. Re-open, restart, resend.
        self._client = None
        self._checked_up = False
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        self.up_if_not()
        return super().request(path, meta, parts, on_log, timeout)

    # --- bring-up ------------------------------------------------------------------------------------
    def _python(self) -> str:
        return f"{self._state()}/venvs/{build_id()}/bin/python"

    def _install(self) -> None:
        """Install this client's runhouse build into a venv on the host, unless it is already there.

        The wheel is built here; its dependencies come from the host's package index. When the host runs
        the same OS and CPU as this machine, this machine's ``uv`` binary is copied over to install them
        (seconds); otherwise the venv's pip does it.
        """
        venv = f"{self._state()}/venvs/{build_id()}"
        ready = f"{venv}/.rh-ready"
        if self.ssh_connection.run(f"test -f {ready}", timeout=30).returncode == 0:
            return
        progress = print_log(self.host)
        progress(f"installing runhouse {build_id()} on {self.host}\n".encode())
        wheel = _local_wheel()
        remote_wheels = f"{self._state()}/wheels/{build_id()}"
        self.ssh_connection.run(f"mkdir -p {remote_wheels} {self._state()}/bin", timeout=30, check=True)
        self.ssh_connection.rsync(str(wheel), f"{remote_wheels}/", timeout=SYNC_TIMEOUT_S)
        remote_wheel = f"{remote_wheels}/{wheel.name}"
        installer = f"{venv}/bin/python -m pip install -q --disable-pip-version-check {remote_wheel}"
        uv = self._copy_uv()
        if uv is not None:
            # The host's own trust store, as pip uses it (some networks sit behind a TLS-inspecting proxy).
            installer = f"{uv} pip install -q --system-certs --python {venv}/bin/python {remote_wheel}"
        script = f"rm -rf {venv} && python3 -m venv {venv} && {installer} && touch {ready}"
        result = self.ssh_connection.run(
            script, timeout=INSTALL_TIMEOUT_S, on_output=lambda line: progress((line + "\n").encode())
        )
        if result.returncode != 0:
            raise DaemonStartError(f"installing runhouse on {self.host} failed", result.stderr[-3000:])

    def _copy_uv(self) -> str | None:
        """Copy this machine's uv to the host when it can run there; returns its path on the host."""
        try:
            from uv import find_uv_bin

            local_uv = find_uv_bin()
        except (ImportError, FileNotFoundError):
            return None
        remote_uv = f"{self._state()}/bin/uv"
        here = f"{platform.system()} {platform.machine()}"
        there = self.ssh_connection.run("uname -sm", timeout=30).stdout.strip()
        if there != here:
            return None
        if self.ssh_connection.run(f"test -x {remote_uv}", timeout=30).returncode != 0:
            self.ssh_connection.rsync(local_uv, remote_uv, timeout=SYNC_TIMEOUT_S)
        return remote_uv

    def _bring_up(self) -> None:
        self._install()
        command = f"{self._python()} -m runhouse.cli start --port {self.server_port}"
        if self.uses_tls:
            bind = self.host if self.host in ("127.0.0.1", "localhost", "::1") else "0.0.0.0"
            command += f" --tls --host {bind}"
        result = self.ssh_connection.run(command, timeout=START_TIMEOUT_S)
        if result.returncode != 0:
            raise DaemonStartError(
                f"the daemon on {self.host} did not start", (result.stdout + result.stderr)[-3000:]
            )
        self._client = None
        self._ssl_context = None

    def _stop_remote_daemon(self) -> None:
        self.ssh_connection.run(
            f"test -x {self._python()} && {self._python()} -m runhouse.cli stop --port {self.server_port}; "
            f"for p in {self._state()}/venvs/*/bin/python; do $p -m runhouse.cli stop --port {self.server_port}; done",
            timeout=60,
        )

    def restart_server(self) -> SSHCluster:
        """Restart the daemon on the host; deployed envs, functions and modules come back."""
        self._stop_remote_daemon()
        self._checked_up = False
        self._envs_ready.clear()
        self.up_if_not()
        return self

    restart_grpc_server = restart_server

    def teardown(self) -> None:
        """Stop the daemon on the host and close the tunnel and the SSH connection."""
        self._stop_remote_daemon()
        self.close()

    def close(self) -> None:
        """Close the tunnel and the SSH connection (the daemon keeps running)."""
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        if self._ssh is not None:
            self._ssh.close()
        self._client = None
        self._checked_up = False
        self._envs_ready.clear()

    # --- code ----------------------------------------------------------------------------------------
    def prepare_code(self, spec: dict[str, Any], env: str) -> dict[str, Any]:
        """Sync the git repo holding the code to the host and point the spec at its copy there."""
        if spec.get("pickled") or not spec.get("root"):
            return spec
        local_root = Path(spec["root"])
        repo = repo_root(local_root)
        remote_repo = self._sync_repo(repo, env)
        relative = local_root.relative_to(repo)
        return {**spec, "root": str(Path(remote_repo) / relative) if str(relative) != "." else remote_repo}

    def _sync_repo(self, repo: Path, env: str) -> str:
        remote_repo = f"{self._state()}/code/{repo.name}-{hashlib.sha256(str(repo).encode()).hexdigest()[:8]}"
        files = _repo_files(repo)
        tree = _tree_hash(repo, files)
        if self._synced.get(str(repo)) == tree:
            return remote_repo
        marker = f"{remote_repo}/{_TREE_MARKER}"
        if self.ssh_connection.run(f"cat {marker}", timeout=30).stdout.strip() != tree:
            self.ssh_connection.run(f"mkdir -p {shlex.quote(remote_repo)}", timeout=30, check=True)
            self.ssh_connection.rsync(f"{repo}/", f"{remote_repo}/", files_from=files, timeout=SYNC_TIMEOUT_S)
            if "requirements.txt" in files:
                self.run([f"python -m pip install -q -r {remote_repo}/requirements.txt"], env=env)
            self.ssh_connection.run(f"echo {tree} > {marker}", timeout=30, check=True)
        self._synced[str(repo)] = tree
        return remote_repo

    def data_system(self) -> DataSystem:
        """The host's disk, reached over this cluster's SSH connection (rsync for bulk moves)."""
        from runhouse.resources.data.ssh import SSHSystem

        return SSHSystem(self)

    # --- shell ---------------------------------------------------------------------------------------
    def ssh(self) -> int:
        """Open an interactive shell on the head node; returns the shell's exit code."""
        return subprocess.call(self.ssh_connection.interactive_command())

    def ssh_tunnel(self, local_port: int | None = None, remote_port: int | None = None) -> Tunnel:
        """Forward ``local_port`` here to ``remote_port`` on the host; use as a context manager."""
        return self.ssh_connection.forward(remote_port or self.server_port, local_port)

    def run_setup(self, commands: Sequence[str], env: str | None = None) -> list[tuple[int, str, str]]:
        """Run setup commands once per host (remembered there); later calls with the same commands skip."""
        digest = hashlib.sha256("\n".join(commands).encode()).hexdigest()[:16]
        marker = f"{self._state()}/setup/{digest}"
        if self.ssh_connection.run(f"test -f {marker}", timeout=30).returncode == 0:
            return []
        results = self.run(list(commands), env=env)
        if all(code == 0 for code, _, _ in results):
            self.ssh_connection.run(f"mkdir -p {self._state()}/setup && touch {marker}", timeout=30, check=True)
        return results

    # --- config --------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        config = super().config()
        del config["host"]
        return {
            **config,
            "ips": self.ips,
            "ssh_creds": self.creds.to_dict(),
            "server_connection_type": self.server_connection_type,
            "accept_new_host_keys": self.accept_new_host_keys,
            "allow_upgrade": self.allow_upgrade,
        }

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> SSHCluster:
        return cls(
            name=config.get("name"),
            ips=config["ips"],
            ssh_creds=config.get("ssh_creds") or {},
            server_port=config.get("server_port"),
            server_connection_type=config.get("server_connection_type", "ssh"),
            accept_new_host_keys=config.get("accept_new_host_keys", False),
            allow_upgrade=config.get("allow_upgrade", True),
        )

    def __repr__(self) -> str:
        return f"<SSHCluster {self.rns_address or self.name!r} at {self.creds.user or ''}@{self.host}>"


def _repo_files(repo: Path) -> list[str]:
    """Files of the repo that git does not ignore (tracked and untracked), or every file outside a repo."""
    if (repo / ".git").exists():
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "-z"],
            capture_output=True, check=True, timeout=60,
        ).stdout
        return sorted(f for f in out.decode().split("\0") if f and (repo / f).is_file())
    return sorted(
        str(p.relative_to(repo)) for p in repo.rglob("*")
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(repo).parts)
    )


def _tree_hash(repo: Path, files: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in files:
        stat = (repo / name).stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _local_wheel() -> Path:
    """The wheel of this exact runhouse build (built once per build id from the source tree it runs from)."""
    build = config_dir() / "wheels" / build_id()
    wheels = list(build.glob("runhouse-*.whl"))
    if wheels:
        return wheels[0]
    source = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").exists() else None
    target = str(source) if source else f"runhouse=={__version__}"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "--wheel-dir",
         str(build), target],
        check=True, timeout=INSTALL_TIMEOUT_S, capture_output=True,
    )
    return next(build.glob("runhouse-*.whl"))
