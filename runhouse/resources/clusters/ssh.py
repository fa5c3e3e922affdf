"""Clusters you bring yourself, reached over SSH: the daemon is brought up there and reached by a tunnel.

On first use the host gets runhouse installed (the client's own build: a wheel made here, with its
dependencies, copied over and installed into a venv named by the build id, so a second bring-up installs
nothing) and the daemon started bound to 127.0.0.1 in a session of its own, so it outlives the SSH
connection. Every operation shares one multiplexed SSH connection; calls go through a local port forward
that is re-opened if it drops. ``.to(cluster)`` first ships the working git repo
(:mod:`runhouse.resources.clusters.code`) and installs its ``requirements.txt``.

The daemon's files on the host are :class:`~runhouse.daemon_files.DaemonFiles` under the host's runhouse
folder, the same layout the daemon writes.
"""

from __future__ import annotations

import dataclasses
import platform
import shlex
import ssl
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from runhouse import progress
from runhouse.daemon_files import REMOTE_CONFIG_DIR, DaemonFiles
from runhouse.errors import ClusterUnreachableError, ClusterVersionError, DaemonStartError, HostKeyError
from runhouse.paths import DEFAULT_SERVER_PORT
from runhouse.prompts import ask_yes_no
from runhouse.protocol import LogSink
from runhouse.resources.clusters.base import CONTROL_TIMEOUT_S, LOCAL_HOSTS, Cluster, progress_log
from runhouse.resources.clusters.code import SYNC_TIMEOUT_S, RepoShipper, local_wheel
from runhouse.resources.clusters.notebook import SSHHost
from runhouse.resources.env import Env
from runhouse.transport.client import ItemsSink, Response, pinned_ssl_context
from runhouse.transport.ssh import HostGroup, SSHConnection, SSHCredentials, Tunnel, ssh_config
from runhouse.version import build_id

if TYPE_CHECKING:
    from runhouse.resources.data.base import DataSystem

INSTALL_TIMEOUT_S = 900.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
STEP_TIMEOUT_S = 30.0


class SSHCluster(Cluster):
    """A machine you bring, reached over SSH (``ips`` and ``ssh_creds``; the first ip is the head node).

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
        autostop_mins: float | None = None,
        autostop_command: str | None = None,
        default_env: Env | str | None = None,
        den_auth: bool = False,
    ) -> None:
        if not ips:
            raise ValueError("an SSH cluster needs ips=[...] (the first is the head node)")
        if server_connection_type not in ("ssh", "tls"):
            raise ValueError(
                f"server_connection_type={server_connection_type!r}: use 'ssh' (an SSH tunnel, the default) or "
                "'tls' (HTTPS straight to the daemon, its certificate pinned)"
            )
        super().__init__(name=name, server_port=server_port or DEFAULT_SERVER_PORT, token=token,
                         default_env=default_env, den_auth=den_auth)
        self.ips = list(ips)
        self.ssh_creds = dict(ssh_creds or {})
        self.server_connection_type = server_connection_type
        self.accept_new_host_keys = accept_new_host_keys
        self.allow_upgrade = allow_upgrade
        self.autostop_mins = autostop_mins
        self.autostop_command = autostop_command
        self.creds = self._credentials()
        self._ssh: SSHConnection | None = None
        self._tunnel: Tunnel | None = None
        self._remote_state: str | None = None
        self._shipper: RepoShipper | None = None
        self._pinned: ssl.SSLContext | None = None
        self._hosts: HostGroup | None = None

    def _credentials(self) -> SSHCredentials:
        """The head node's SSH credentials, from ``ips`` and ``ssh_creds`` as they are now."""
        creds = {**self.ssh_creds, "accept_new_host_keys": self.accept_new_host_keys}
        return SSHCredentials.from_dict(self.ips[0], creds)

    # --- connection ----------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """The head node (the first of ``ips``)."""
        return self.ips[0]

    @property
    def is_local(self) -> bool:
        return False

    @property
    def ssh_connection(self) -> SSHConnection:
        """The one multiplexed SSH connection to the head node."""
        if self._ssh is None:
            self._ssh = SSHConnection(self.creds)
        return self._ssh

    @property
    def hosts(self) -> HostGroup:
        """Every host of the cluster (``ips``, head first), to run commands or rsync on all at once.

        The head node's connection is shared; the others use the same ``ssh_creds``.

        Example::

            results = gpu.hosts.run("nvidia-smi -L")   # {"10.0.0.5:22": CommandResult, ...}
        """
        if self._hosts is None:
            others = [dataclasses.replace(self.creds, host=ip) for ip in self.ips[1:]]
            self._hosts = HostGroup([self.ssh_connection, *others])
        return self._hosts

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

    # An SSH cluster does not wait for refused connections: it re-opens its tunnel instead (see request).
    RECONNECT_WINDOW_S = 0.2
    # Its daemon is brought up (installed, started) by whatever needs it first, and started again if found dead.
    _starts_on_use = True

    def _endpoint(self) -> tuple[str, int]:
        if self.uses_tls:
            return self.host, self.server_port
        return "127.0.0.1", self._open_tunnel().local_port

    def _ssl_context(self) -> ssl.SSLContext | None:
        """TLS context trusting exactly the daemon's certificate, read over SSH (None until it exists)."""
        if self.uses_tls and self._pinned is None:
            result = self.ssh_connection.run(f"cat {self._daemon_files().tls_cert}", timeout=STEP_TIMEOUT_S)
            if result.returncode == 0 and "BEGIN CERTIFICATE" in result.stdout:
                self._pinned = pinned_ssl_context(result.stdout)
        return self._pinned

    def _state(self) -> str:
        """The runhouse folder on the host (absolute)."""
        if self._remote_state is None:
            result = self.ssh_connection.run(f"echo {REMOTE_CONFIG_DIR}", timeout=STEP_TIMEOUT_S, check=True)
            self._remote_state = result.stdout.strip()
        return self._remote_state

    def _daemon_files(self) -> DaemonFiles:
        return DaemonFiles.remote(self._state(), self.server_port)

    def _read_token(self) -> str | None:
        result = self.ssh_connection.run(f"cat {self._daemon_files().token}", timeout=STEP_TIMEOUT_S)
        return result.stdout.strip() or None

    def _health(self) -> dict[str, Any] | None:
        if self.uses_tls and self._ssl_context() is None:
            return None  # never started with TLS here: no certificate yet
        return super()._health()

    def up_if_not(self) -> SSHCluster:
        """Connect; install runhouse and start the daemon on the host when it is not answering."""
        super().up_if_not()
        return self

    def _ensure_up(self, start: bool = False) -> None:
        """Connect first (an unknown host key may be accepted at a prompt), then as every cluster does."""
        if not self._checked_up:
            self._connect()
            # `ssh NAME` (and `ssh NAME-i` for the other nodes) in a terminal reaches what this connection does
            ssh_config.register_cluster(self.name, self.creds, [c.creds for c in self.hosts.connections.values()][1:])
        super()._ensure_up(start)

    def _accept_running(self, answer: dict[str, Any]) -> None:
        """A daemon of another build is replaced by this one's (unless ``allow_upgrade`` is off)."""
        if answer.get("build") == build_id():
            return
        if not self.allow_upgrade:
            raise ClusterVersionError(
                f"the daemon on {self.host} runs runhouse {answer.get('build')}, this client is {build_id()}; "
                "pass allow_upgrade=True to replace it, or use the matching runhouse here"
            )
        progress_log(self.host)(f"upgrading the daemon from {answer.get('build')} to {build_id()}\n".encode())
        self._stop_daemon()
        self._start_daemon()

    def _connect(self) -> None:
        """Open the SSH connection; an unknown host key may be accepted at a prompt (never a changed one)."""
        try:
            with progress.step(f"connect to {self.creds.address}"):  # its own step: a prompt may follow
                self.ssh_connection.check()
        except HostKeyError as exc:
            if exc.changed or self.accept_new_host_keys or not sys.stdin.isatty():
                raise
            if not ask_yes_no(f"{exc}\nAccept the host key of {self.creds.address} and record it? [y/N] "):
                raise
            self.accept_new_host_keys = True
            # The new policy is another master (its control socket is named by it): what was made on the old
            # connection (the host group, the tunnel) is closed so nothing opens a second master on it later.
            self.close()
            self._ssh = None
            self.creds = dataclasses.replace(self.creds, accept_new_host_keys=True)
            self.ssh_connection.check()

    def request(self, path: str, meta: dict[str, Any] | None = None, parts: Sequence[Any] = (),
                on_log: LogSink | None = None, timeout: float = CONTROL_TIMEOUT_S,
                on_items: ItemsSink | None = None) -> Response:
        try:
            return super().request(path, meta, parts, on_log, timeout, on_items)
        except ClusterUnreachableError as exc:
            if getattr(exc, "request_sent", True):
                raise  # it may have reached user code: never resent
        # Refused before anything was sent: the tunnel or the daemon went away. Re-open, restart, resend.
        self._client = None
        self._checked_up = False
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        self._ensure_up()
        return super().request(path, meta, parts, on_log, timeout, on_items)

    # --- bring-up ------------------------------------------------------------------------------------
    def _python(self) -> str:
        return f"{self._state()}/venvs/{build_id()}/bin/python"

    def _install(self, connection: SSHConnection | None = None, state: str | None = None, extra: str = "") -> None:
        """Install this client's runhouse build (with ``extra``, like ``ray``) into a venv on a host (default: the
        head, else ``connection`` whose runhouse folder is ``state``), unless it is already there.

        The wheel is built here; its dependencies come from the host's package index. When the host runs
        the same OS and CPU as this machine, this machine's ``uv`` binary is copied over to install them
        (seconds); otherwise the venv's pip does it.
        """
        connection = connection or self.ssh_connection
        state = state or self._state()
        host = connection.creds.host
        venv = f"{state}/venvs/{build_id()}"
        base_ready = f"{venv}/.rh-ready"
        ready = f"{base_ready}-{extra}" if extra else base_ready
        if connection.run(f"test -f {ready}", timeout=STEP_TIMEOUT_S).returncode == 0:
            return
        with progress.step(f"install runhouse{f'[{extra}]' if extra else ''} {build_id()} on {host}"):
            self._install_there(connection, state, venv, base_ready, ready, extra)

    def _install_there(self, connection: SSHConnection, state: str, venv: str, base_ready: str, ready: str,
                       extra: str) -> None:
        host = connection.creds.host
        log = progress_log(host)
        wheel = local_wheel()
        remote_wheels = f"{state}/wheels/{build_id()}"
        connection.run(f"mkdir -p {remote_wheels} {state}/bin", timeout=STEP_TIMEOUT_S, check=True)
        connection.rsync(str(wheel), f"{remote_wheels}/", timeout=SYNC_TIMEOUT_S)
        target = shlex.quote(f"{remote_wheels}/{wheel.name}" + (f"[{extra}]" if extra else ""))
        installer = f"{venv}/bin/python -m pip install -q --disable-pip-version-check {target}"
        uv = self._copy_uv(connection, state)
        if uv is not None:
            # The host's own trust store, as pip uses it (some networks sit behind a TLS-inspecting proxy).
            installer = f"{uv} pip install -q --system-certs --python {venv}/bin/python {target}"
        # A venv left half-made by an interrupted install is made again; a ready one only gains the extra.
        script = (f"{{ test -f {base_ready} || {{ rm -rf {venv} && python3 -m venv {venv}; }}; }} && {installer} "
                  f"&& touch {base_ready} {ready}")
        result = connection.run(
            script, timeout=INSTALL_TIMEOUT_S, on_output=lambda line: log((line + "\n").encode())
        )
        if result.returncode != 0:
            raise DaemonStartError(f"installing runhouse on {host} failed", result.stderr[-3000:])

    def _copy_uv(self, connection: SSHConnection, state: str) -> str | None:
        """Copy this machine's uv to a host when it can run there; returns its path on the host."""
        try:
            from uv import find_uv_bin

            local_uv = find_uv_bin()
        except (ImportError, FileNotFoundError):
            return None
        remote_uv = f"{state}/bin/uv"
        here = f"{platform.system()} {platform.machine()}"
        there = connection.run("uname -sm", timeout=STEP_TIMEOUT_S).stdout.strip()
        if there != here:
            return None
        if connection.run(f"test -x {remote_uv}", timeout=STEP_TIMEOUT_S).returncode != 0:
            connection.rsync(local_uv, remote_uv, timeout=SYNC_TIMEOUT_S)
        return remote_uv

    def _start_daemon(self) -> None:
        """Install this runhouse build on the host (once) and start the daemon there."""
        self._install()
        self._launch_daemon()

    def _launch_daemon(self, *options: str) -> None:
        """Start the installed daemon on the head (``runhouse start`` with these further ``options``), then give
        it the cluster's autostop."""
        command = " ".join([f"{self._python()} -m runhouse.cli start --port {self.server_port}", *options])
        if self.uses_tls:
            bind = self.host if self.host in LOCAL_HOSTS else "0.0.0.0"
            command += f" --tls --host {bind}"
        with progress.step(f"start the daemon on {self.host}"):
            result = self.ssh_connection.run(command, timeout=START_TIMEOUT_S)
            if result.returncode != 0:
                raise DaemonStartError(
                    f"the daemon on {self.host} did not start", (result.stdout + result.stderr)[-3000:]
                )
        self._client = None
        self._pinned = None
        self._after_start()

    def _after_start(self) -> None:
        """Give a daemon just started the cluster's autostop (``autostop_mins``, and the command it runs)."""
        if self.autostop_mins is not None or self.autostop_command:
            self._set_autostop(self.autostop_mins, self.autostop_command, set_commands=True)

    def _stop_daemon(self) -> None:
        """Stop the daemon on the host, whichever runhouse build installed there started it."""
        self.ssh_connection.run(
            f"test -x {self._python()} && {self._python()} -m runhouse.cli stop --port {self.server_port}; "
            f"for p in {self._state()}/venvs/*/bin/python; do $p -m runhouse.cli stop --port {self.server_port}; done",
            timeout=STOP_TIMEOUT_S,
        )

    def teardown(self) -> None:
        """Stop the daemon, close the connections, and remove the cluster's ``ssh NAME`` entry once it is down."""
        super().teardown()
        ssh_config.unregister_cluster(self.name)

    def restart_server(self) -> SSHCluster:
        """Restart the daemon on the host; deployed envs, functions and modules come back."""
        super().restart_server()
        return self


    def close(self) -> None:
        """Close the tunnel and the SSH connection (the daemon keeps running)."""
        super().close()
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        if self._hosts is not None:
            self._hosts.close()  # the connections it made; the head node's is closed next
            self._hosts = None
        if self._ssh is not None:
            self._ssh.close()

    # --- code ----------------------------------------------------------------------------------------
    def prepare_code(self, spec: dict[str, Any], env: str) -> dict[str, Any]:
        """Sync the git repo holding the code to the host and point the spec at its copy there."""
        if self._shipper is None:
            self._shipper = RepoShipper(lambda: self.ssh_connection, self._state)

        def install(requirements: str) -> None:
            self.run([f"python -m pip install -q -r {requirements}"], env=env)

        return self._shipper.ship(spec, install)

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

    def _notebook_host(self) -> SSHHost:
        """JupyterLab on the head node, forwarded through this cluster's SSH connection."""
        self._ensure_up()  # connects first: accepting a new host key replaces the connection
        return SSHHost(self.ssh_connection)

    # --- config --------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "ips": self.ips,
            "ssh_creds": self.creds.to_dict(),
            "server_connection_type": self.server_connection_type,
            "accept_new_host_keys": self.accept_new_host_keys,
            "allow_upgrade": self.allow_upgrade,
            "autostop_mins": self.autostop_mins,
            "autostop_command": self.autostop_command,
        }

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> SSHCluster:
        return cls(**cls._arguments_from_config(config))

    @classmethod
    def _arguments_from_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The constructor's arguments saved in ``config`` (kinds of SSH clusters add theirs)."""
        return {
            "name": config.get("name"),
            "ips": config["ips"],
            "ssh_creds": config.get("ssh_creds") or {},
            "server_port": config.get("server_port"),
            "server_connection_type": config.get("server_connection_type", "ssh"),
            "accept_new_host_keys": config.get("accept_new_host_keys", False),
            "allow_upgrade": config.get("allow_upgrade", True),
            "autostop_mins": config.get("autostop_mins"),
            "autostop_command": config.get("autostop_command"),
            "default_env": config.get("default_env"),
            "den_auth": config.get("den_auth") is True,
        }

    def __repr__(self) -> str:
        return f"<SSHCluster {self.rns_address or self.name!r} at {self.creds.user or ''}@{self.host}>"
