"""One host over SSH: :class:`SSHCredentials`, :class:`SSHConnection` (commands, rsync, the shared master).

See the package docstring for the options every ssh invocation gets and how failures become typed errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import select
import selectors
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runhouse.errors import (
    HostKeyError,
    SSHAuthenticationError,
    SSHConnectionError,
    SSHError,
    SSHTimeoutError,
)
from runhouse.lifetime import Closeable
from runhouse.paths import config_dir
from runhouse.transport.ssh.tunnel import Tunnel

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_COMMAND_TIMEOUT_S = 600.0
# Control commands (`ssh -O check/exit/forward/cancel`) only talk to the local master process.
CONTROL_TIMEOUT_S = 5.0
# An idle master stays up this long after its last use.
CONTROL_PERSIST_S = 600
SERVER_ALIVE_INTERVAL_S = 5
SERVER_ALIVE_COUNT_MAX = 3
# Authentication and a proxy command may take a while after the TCP connect itself.
_MASTER_EXTRA_TIMEOUT_S = 10.0
# Unix socket paths are limited to 104 bytes on macOS (108 on Linux), and ssh binds the control socket
# under a temporary name 17 characters longer before renaming it.
_MAX_CONTROL_PATH = 80
_PIPE_BUF = select.PIPE_BUF
# Lines ssh itself prints on stderr about the shared connection, kept out of the command's stderr. The first
# two appear when the host refuses one more session on the master (sshd's MaxSessions, 10 by default) and
# ssh falls back to a connection of the command's own.
_SSH_NOTICE = re.compile(
    r"(mux_client_[a-z_]+: |ControlSocket .* already exists, disabling multiplexing"
    r"|Warning: Permanently added .* to the list of known hosts)"
)

_CREDS_FIELDS = {
    "ssh_user": "user",
    "ssh_private_key": "private_key",
    "ssh_port": "port",
    "password": "password",
    "ssh_proxy_command": "proxy_command",
    "known_hosts": "known_hosts",
    "accept_new_host_keys": "accept_new_host_keys",
}



@dataclass(frozen=True)
class SSHCredentials:
    """Where and how to reach a host over SSH.

    ``private_key`` and ``known_hosts`` are paths (``~`` is expanded when used). ``password`` is fed to ssh
    through ``sshpass`` and is never written anywhere (not in :meth:`to_dict`, not in ``repr``). An unknown
    host key is accepted (and recorded in ``known_hosts``) only when ``accept_new_host_keys`` is true; a
    changed host key is always refused.

    Example::

        SSHCredentials.from_dict("10.0.0.5", {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_ed25519"})
    """

    host: str
    user: str | None = None
    port: int = 22
    private_key: str | None = None
    password: str | None = field(default=None, repr=False)
    proxy_command: str | None = None
    known_hosts: str | None = None
    accept_new_host_keys: bool = False
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() for c in self.host) or self.host.startswith("-"):
            raise ValueError(f"not a host name or address: {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"ssh port must be an integer 1-65535, not {self.port!r}")
        if self.user is not None and (not self.user or self.user.startswith("-")):
            raise ValueError(f"not a user name: {self.user!r}")
        if not self.connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, not {self.connect_timeout!r}")

    @classmethod
    def from_dict(cls, host: str, creds: Mapping[str, Any]) -> SSHCredentials:
        """Credentials from runhouse's ``ssh_creds`` dict.

        Keys: ``ssh_user``, ``ssh_private_key``, ``ssh_port``, ``password``, ``ssh_proxy_command``,
        ``known_hosts``, ``accept_new_host_keys``; any other key is a ``ValueError`` naming it.

        Example::

            SSHCredentials.from_dict("10.0.0.5", {"ssh_user": "ubuntu", "ssh_port": 2222})
        """
        unknown = sorted(set(creds) - set(_CREDS_FIELDS))
        if unknown:
            raise ValueError(f"unknown ssh_creds keys {unknown}; allowed: {sorted(_CREDS_FIELDS)}")
        values: dict[str, Any] = {_CREDS_FIELDS[key]: value for key, value in creds.items() if value is not None}
        if "port" in values:
            try:
                values["port"] = int(values["port"])
            except (TypeError, ValueError):
                raise ValueError(f"ssh_port must be an integer 1-65535, not {creds['ssh_port']!r}") from None
        if "accept_new_host_keys" in values and not isinstance(values["accept_new_host_keys"], bool):
            raise ValueError(f"accept_new_host_keys must be true or false, not {values['accept_new_host_keys']!r}")
        for key in ("user", "private_key", "password", "proxy_command", "known_hosts"):
            if key in values:
                values[key] = str(values[key])
        return cls(host=host, **values)

    def to_dict(self) -> dict[str, Any]:
        """The ``ssh_creds`` dict back (unset values left out); the password is never included."""
        out: dict[str, Any] = {"ssh_port": self.port, "accept_new_host_keys": self.accept_new_host_keys}
        for key, name in _CREDS_FIELDS.items():
            value = getattr(self, name)
            if key not in out and key != "password" and value is not None:
                out[key] = value
        return out

    @property
    def address(self) -> str:
        """``host:port`` as shown in messages (IPv6 addresses bracketed)."""
        return f"{_bracket(self.host)}:{self.port}"


@dataclass
class CommandResult:
    """Exit code and output of one remote command (or rsync run)."""

    returncode: int
    stdout: str
    stderr: str


class SSHConnection(Closeable):
    """One multiplexed OpenSSH connection (ControlMaster, ControlPersist) to a host, reused by every operation.

    Safe to share between threads. Operations connect on first use; :meth:`check` connects eagerly and
    raises the typed error when the host cannot be reached. Connections with the same credentials (also
    in other processes) share one master, so :meth:`close` ends it for all of them.

    Example::

        with SSHConnection(SSHCredentials("10.0.0.5", user="ubuntu")) as conn:
            print(conn.run("uname -a", check=True).stdout)
    """

    def __init__(self, creds: SSHCredentials, control_dir: Path | None = None) -> None:
        self.creds = creds
        self._control_dir = control_dir
        self._control_path: Path | None = None
        self._master_lock = threading.Lock()

    def __repr__(self) -> str:
        user = f"{self.creds.user}@" if self.creds.user else ""
        return f"SSHConnection({user}{self.creds.address})"


    # -- paths and options -------------------------------------------------------------------------------

    @property
    def control_path(self) -> Path:
        """The master's control socket: one per host, user, key, proxy and host-key policy."""
        if self._control_path is None:
            c = self.creds
            parts = (c.host, c.port, c.user, self._private_key(), c.proxy_command, self.known_hosts_path)
            identity = "\0".join(str(part) for part in (*parts, c.accept_new_host_keys))
            name = hashlib.sha256(identity.encode()).hexdigest()[:20]
            directory = self._control_dir if self._control_dir is not None else config_dir() / "ssh"
            if len(str(directory / name)) > _MAX_CONTROL_PATH:
                directory = _short_control_dir()
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._control_path = directory / name
        return self._control_path

    @property
    def known_hosts_path(self) -> Path:
        """The known_hosts file host keys are checked against (and recorded in, when accepted)."""
        return Path(self.creds.known_hosts or "~/.ssh/known_hosts").expanduser()

    def _private_key(self) -> str | None:
        return str(Path(self.creds.private_key).expanduser()) if self.creds.private_key else None

    def ssh_options(self, *, batch: bool = True) -> list[str]:
        """The ssh command-line options every invocation uses (without the ``ssh`` and the host)."""
        c = self.creds
        options: list[str] = []
        if batch and c.password is None:
            options += ["-o", "BatchMode=yes"]
        if c.password is not None:
            options += ["-o", "NumberOfPasswordPrompts=1"]
        options += [
            "-o", f"ConnectTimeout={max(1, math.ceil(c.connect_timeout))}",
            "-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL_S}",
            "-o", f"ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}",
            "-o", f"StrictHostKeyChecking={'accept-new' if c.accept_new_host_keys else 'yes'}",
            "-o", f"UserKnownHostsFile={_option_path(self.known_hosts_path)}",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={_option_path(self.control_path)}",
            "-o", f"ControlPersist={CONTROL_PERSIST_S}",
            "-o", "ExitOnForwardFailure=yes",
            "-p", str(c.port),
        ]  # fmt: skip
        key = self._private_key()
        if key:
            # as -o, not -i: ssh expands %-tokens in the path either way, and only -o's value can escape them
            options += ["-o", f"IdentityFile={_option_path(Path(key))}", "-o", "IdentitiesOnly=yes"]
        if c.proxy_command:
            options += ["-o", f"ProxyCommand={c.proxy_command}"]
        if c.user:
            options += ["-l", c.user]
        return options

    def _ssh_argv(self) -> list[str]:
        """``ssh`` and its options, behind ``sshpass -e`` when a password is used."""
        if self.creds.password is None:
            return ["ssh", *self.ssh_options()]
        if shutil.which("sshpass") is None:
            raise SSHError(
                f"A password is set for {self.creds.address}, and passwords are fed to ssh by `sshpass`, which "
                "is not installed: `apt-get install sshpass` (or `brew install hudochenkov/sshpass/sshpass`), "
                "or use a private key instead.",
                host=self.creds.address,
            )
        return ["sshpass", "-e", "ssh", *self.ssh_options()]

    def _env(self) -> dict[str, str] | None:
        if self.creds.password is None:
            return None
        return {**os.environ, "SSHPASS": self.creds.password}

    def _control(self, operation: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """``ssh -O operation``: a request to the local master process (no network round trip)."""
        argv = ["ssh", "-o", f"ControlPath={_option_path(self.control_path)}", "-O", operation, *extra, self.creds.host]
        try:
            return subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CONTROL_TIMEOUT_S
            )
        except FileNotFoundError:
            raise _missing("ssh", "openssh-client") from None
        except subprocess.TimeoutExpired:
            raise SSHTimeoutError(
                f"The ssh master process for {self.creds.address} did not answer `ssh -O {operation}` within "
                f"{CONTROL_TIMEOUT_S:g} s; close() the connection and retry.",
                host=self.creds.address,
            ) from None

    # -- the master connection ---------------------------------------------------------------------------

    def is_connected(self) -> bool:
        """Whether the master connection is up (``ssh -O check``)."""
        if not self.control_path.exists():
            return False
        return self._control("check").returncode == 0

    def check(self) -> None:
        """Connect now (or confirm the master is up), raising the typed error when that fails.

        Raises:
            HostKeyError: the host key is unknown (and not accepted) or changed.
            SSHAuthenticationError: the key or password was refused.
            SSHConnectionError: connection refused, no route, unknown host name, connect timeout.
            SSHTimeoutError: connecting took longer than ``connect_timeout`` plus 10 s.
        """
        with self._master_lock:
            if self.is_connected():
                return
            self._start_master()

    def _ensure_master(self) -> None:
        """Start the master unless its socket exists; a stale socket is replaced by ssh itself."""
        if self.control_path.exists():
            return
        with self._master_lock:
            if not self.control_path.exists():
                self._start_master()

    def _start_master(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()  # stale: its master is gone (checked by the caller)
        if self.creds.accept_new_host_keys:
            # ssh cannot record a new host key in a folder that does not exist
            self.known_hosts_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # With ControlPersist, `ssh -N` returns once the master is authenticated and running in the background
        # (in a session of its own, its standard streams on /dev/null).
        argv = [*self._ssh_argv(), "-N", self.creds.host]
        timeout = self.creds.connect_timeout + _MASTER_EXTRA_TIMEOUT_S
        proc = _spawn(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self._env()
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise SSHTimeoutError(
                f"Connecting to {self.creds.address} did not finish within {timeout:g} s (connect, key exchange "
                "and authentication); check that the host is up and that the proxy command, if any, works.",
                host=self.creds.address,
            ) from None
        stderr = err.decode(errors="replace")
        if proc.returncode != 0:
            raise self._error_from_stderr(proc.returncode, stderr) or SSHConnectionError(
                f"Could not connect to {self.creds.address} (ssh exit code {proc.returncode}).{_said(stderr)}",
                host=self.creds.address,
                stderr=stderr,
            )

    def close(self) -> None:
        """End the master connection (``ssh -O exit``); tunnels on it close too. Safe to call twice."""
        path = self.control_path
        if not path.exists():
            return
        with contextlib.suppress(SSHError):
            self._control("exit")
        # The master may have died without removing its socket.
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()

    # -- operations --------------------------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout: float | None = DEFAULT_COMMAND_TIMEOUT_S,
        on_output: Callable[[str], None] | None = None,
        input: bytes | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run ``command`` on the host through the remote user's login shell (``$SHELL -c command``).

        Args:
            timeout: seconds before the local ssh process is killed and :class:`SSHTimeoutError` raised (the
                remote process gets no signal: without a terminal, ssh cannot send one; it ends when it
                next writes output).
            on_output: called with each line of output (stdout and stderr, newline stripped) as it arrives;
                the result still holds stdout and stderr apart.
            input: bytes fed to the command's stdin (otherwise stdin is empty).
            check: raise :class:`SSHError` (with stderr) when the command exits non-zero.

        Raises:
            SSHConnectionError: the connection could not be made or was lost while the command ran.
        """
        self._ensure_master()
        argv = [*self._ssh_argv(), "-T", self.creds.host, command]
        proc = _spawn(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env(),
        )
        try:
            out, err, ssh_said = _exchange(proc, input, timeout, on_output)
        except subprocess.TimeoutExpired as expired:
            _kill_group(proc)
            raise SSHTimeoutError(
                f"`{_short(command)}` on {self.creds.address} did not finish within {timeout:g} s; its ssh "
                "process was killed. Pass a larger timeout= if the command needs longer.",
                host=self.creds.address,
                stderr=expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else "",
            ) from None
        except BaseException:  # on_output raised, or KeyboardInterrupt: do not leave ssh running
            _kill_group(proc)
            raise
        result = CommandResult(proc.returncode, out, err)
        if result.returncode == 255 and not self.is_connected():
            # 255 is also what ssh exits with when the connection is gone; a command that itself exits 255
            # leaves the master up.
            everything = ssh_said + result.stderr
            raise self._error_from_stderr(255, everything) or SSHConnectionError(
                f"The connection to {self.creds.address} was lost while running `{_short(command)}` (the host "
                "went down, sshd was restarted, or the network dropped); the next operation reconnects."
                f"{_said(everything)}",
                host=self.creds.address,
                stderr=everything,
            )
        if check and result.returncode != 0:
            raise SSHError(
                f"`{_short(command)}` on {self.creds.address} exited with code {result.returncode}."
                f"{_said(result.stderr, 'stderr')}",
                host=self.creds.address,
                stderr=result.stderr,
            )
        return result

    def rsync(
        self,
        source: str,
        destination: str,
        *,
        files_from: Sequence[str] | None = None,
        delete: bool = False,
        excludes: Sequence[str] = (),
        timeout: float | None = DEFAULT_COMMAND_TIMEOUT_S,
        upload: bool = True,
    ) -> CommandResult:
        """Copy files with rsync over this connection; only changed files are transferred.

        ``upload=True`` sends local ``source`` to remote ``destination``; ``False`` fetches remote ``source``
        into local ``destination``. Trailing slashes mean what they mean to rsync (``src/`` copies the
        contents). Remote paths are relative to the remote home folder. Files are compared by size and
        modification time (rsync's quick check); stdout lists what changed (``--itemize-changes``).

        Args:
            files_from: send only these paths (relative to ``source``); directories listed are created, not
                recursed into.
            delete: remove files at the destination that the source does not have.
            excludes: rsync ``--exclude`` patterns.

        Raises:
            SSHError: rsync failed (a typed subclass when ssh could not connect).
            SSHTimeoutError: the transfer ran past ``timeout``.
        """
        self._ensure_master()
        argv = ["rsync", "--archive", "--itemize-changes", "-e", shlex.join(self._ssh_argv())]
        if delete:
            argv.append("--delete")
        argv += [f"--exclude={pattern}" for pattern in excludes]
        if files_from is not None:
            argv.append("--files-from=-")
        remote = source if not upload else destination
        remote_spec = f"{_bracket(self.creds.host)}:{remote}"
        argv += [source, remote_spec] if upload else [remote_spec, destination]
        list_input = "".join(f"{path}\n" for path in files_from).encode() if files_from is not None else None
        proc = _spawn(
            argv,
            stdin=subprocess.PIPE if list_input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env(),
        )
        try:
            out, err = proc.communicate(list_input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise SSHTimeoutError(
                f"rsync {source} -> {destination} ({'to' if upload else 'from'} {self.creds.address}) did not "
                f"finish within {timeout:g} s and was stopped; pass a larger timeout= for big transfers.",
                host=self.creds.address,
            ) from None
        result = CommandResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
        if result.returncode != 0:
            # rsync passes on ssh's 255; its own failures have other codes (and may say "Permission denied")
            typed = self._error_from_stderr(255, result.stderr) if result.returncode == 255 else None
            raise typed or SSHError(
                f"rsync {source} -> {destination} ({'to' if upload else 'from'} {self.creds.address}) failed "
                f"with exit code {result.returncode}.{_said(result.stderr, 'rsync said')}",
                host=self.creds.address,
                stderr=result.stderr,
            )
        return result

    def forward(self, remote_port: int, local_port: int | None = None, remote_host: str = "127.0.0.1") -> Tunnel:
        """Forward ``127.0.0.1:local_port`` here to ``remote_host:remote_port`` as seen from the host.

        The forward lives in the master connection (``ssh -O forward -L``); ``local_port=None`` picks a free
        port. Close the returned :class:`Tunnel` (or use it as a context manager) to cancel it.

        Raises:
            SSHError: the forward could not be set up (for example the local port is taken).
        """
        self.check()
        port = local_port if local_port is not None else _free_port()
        spec = f"127.0.0.1:{port}:{_bracket(remote_host)}:{remote_port}"
        done = self._control("forward", "-L", spec)
        if done.returncode != 0:
            raise SSHError(
                f"Could not forward local port {port} to {remote_host}:{remote_port} on {self.creds.address}"
                f" (is local port {port} already in use?).{_said(done.stderr)}",
                host=self.creds.address,
                stderr=done.stderr,
            )
        return Tunnel(self, spec, local_port=port, remote_port=remote_port, remote_host=remote_host)

    def interactive_command(self) -> list[str]:
        """The argv of an interactive ``ssh -t`` session to the host, with the same options.

        It may prompt (for a password or a key's passphrase), so ``BatchMode`` is left out and a password
        is not fed through sshpass: the user types it.
        """
        return ["ssh", "-t", *self.ssh_options(batch=False), self.creds.host]

    # -- errors ------------------------------------------------------------------------------------------

    def _error_from_stderr(self, returncode: int, stderr: str) -> SSHError | None:
        """The typed error for what ssh (or sshpass) printed, or None when it is not an ssh failure."""
        address = self.creds.address
        known = self.known_hosts_path
        said = _said(stderr)

        def make(kind: type[SSHError], message: str) -> SSHError:
            return kind(message + said, host=address, stderr=stderr)

        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "has changed and you have requested" in stderr:
            changed = make(
                HostKeyError,
                f"The host key of {address} has CHANGED since it was recorded in {known}: either the host was "
                "reinstalled or someone is intercepting the connection. Refusing to connect. If the change is "
                f"expected, remove the stale key with `ssh-keygen -f {shlex.quote(str(known))} -R "
                f"{shlex.quote(_known_hosts_name(self.creds.host, self.creds.port))}` and connect again with "
                "accept_new_host_keys=True.",
            )
            changed.changed = True  # type: ignore[attr-defined]
            return changed
        sshpass_said = returncode if self.creds.password is not None else None  # sshpass's own exit codes
        if "host key is known" in stderr or "Host key verification failed" in stderr or sshpass_said == 6:
            return make(
                HostKeyError,
                f"The host key of {address} is not in {known}, so the host cannot be verified. If you trust it, "
                "connect with accept_new_host_keys=True (the key is recorded on first connect), or add its key "
                f"to {known} yourself (`ssh-keyscan -p {self.creds.port} {self.creds.host}`, after checking the "
                "fingerprint).",
            )
        if "Permission denied" in stderr or "Too many authentication failures" in stderr or sshpass_said == 5:
            return make(SSHAuthenticationError, self._auth_hint(stderr))
        if "Connection refused" in stderr:
            return make(
                SSHConnectionError,
                f"Connection to {address} refused: nothing listens there. Check that sshd runs on the host and "
                "that the port is right.",
            )
        if "Could not resolve hostname" in stderr or "Name or service not known" in stderr:
            return make(SSHConnectionError, f"Host name {self.creds.host!r} not found (DNS); check the spelling.")
        if "No route to host" in stderr or "Network is unreachable" in stderr:
            return make(
                SSHConnectionError, f"No route to {address}: the host is down or on a network this machine can't reach."
            )
        if "timed out" in stderr:
            return make(
                SSHConnectionError,
                f"Connecting to {address} timed out after {self.creds.connect_timeout:g} s: the host is down, a "
                "firewall drops the packets, or the proxy command does not connect.",
            )
        if any(text in stderr for text in ("Connection closed", "Connection reset", "Broken pipe", "closed by remote")):
            via = f" (through proxy command `{self.creds.proxy_command}`)" if self.creds.proxy_command else ""
            return make(
                SSHConnectionError,
                f"The connection to {address}{via} was closed: the host or the proxy command hung up, sshd "
                "restarted, or the network dropped.",
            )
        if returncode == 255 and stderr.strip():
            return make(SSHConnectionError, f"ssh could not reach {address}.")
        return None

    def _auth_hint(self, stderr: str) -> str:
        c = self.creds
        who = f"{c.user}@{c.address}" if c.user else c.address
        allowed = re.search(r"Permission denied \(([^)]*)\)", stderr)
        methods = allowed.group(1).split(",") if allowed else []
        if c.password is not None and methods and not {"password", "keyboard-interactive"} & set(methods):
            return f"{who} does not take passwords (it allows: {', '.join(methods)}); use a private key."
        if c.password is not None:
            return f"{who} refused the password; check the user name and password."
        key = self._private_key()
        if key and not Path(key).exists():
            return f"{who} refused the connection: the private key {key} does not exist."
        if "UNPROTECTED PRIVATE KEY FILE" in stderr:
            return f"ssh ignored the private key {key} because others can read it: run `chmod 600 {key}`."
        offered = f"the key {key}" if key else "the keys from ssh-agent and ~/.ssh"
        return (
            f"{who} refused {offered}. Check the user name, and that the matching public key is in that "
            "user's ~/.ssh/authorized_keys on the host."
        )


# -- helpers -------------------------------------------------------------------------------------------------


def close_masters() -> int:
    """End every SSH master connection runhouse keeps open for this runhouse folder (each lingers
    ``CONTROL_PERSIST_S`` after its last use so the next process reuses it), and so every tunnel on them.

    Returns how many were open.
    """
    closed = 0
    folders = [config_dir() / "ssh", Path(tempfile.gettempdir()) / f"rh-ssh-{os.getuid()}"]  # see control_path
    for folder in folders:
        for socket_path in sorted(folder.glob("*")) if folder.is_dir() else []:
            if not stat.S_ISSOCK(socket_path.lstat().st_mode):
                continue
            done = subprocess.run(["ssh", "-o", f"ControlPath={_option_path(socket_path)}", "-O", "exit", "runhouse"],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=CONTROL_TIMEOUT_S)
            closed += done.returncode == 0
            socket_path.unlink(missing_ok=True)
    return closed


def _exchange(
    proc: subprocess.Popen[bytes], input: bytes | None, timeout: float | None, on_output: Callable[[str], None] | None
) -> tuple[str, str, str]:
    """Feed ``input`` to a process and collect its stdout and stderr, handing each line to ``on_output`` live.

    Returns stdout, stderr, and apart from them the notices ssh itself printed about the shared connection.

    One thread, one ``select`` loop, like :meth:`subprocess.Popen.communicate` but line by line. Reads until
    both streams end: an ssh client hands its streams to the master, which may hold them a little longer.

    Raises:
        subprocess.TimeoutExpired: past ``timeout`` (its ``stderr`` holds what was read so far).
    """
    assert proc.stdout is not None and proc.stderr is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    stdout_fd, stderr_fd = proc.stdout.fileno(), proc.stderr.fileno()
    partial = {stdout_fd: bytearray(), stderr_fd: bytearray()}
    lines: dict[int, list[str]] = {stdout_fd: [], stderr_fd: []}
    ssh_lines: list[str] = []
    pending = memoryview(input or b"")

    def emit(fd: int, raw: bytes) -> None:
        line = raw.decode(errors="replace")
        if fd == stderr_fd and _SSH_NOTICE.match(line):
            ssh_lines.append(line)
            return
        lines[fd].append(line)
        if on_output is not None:
            on_output(line[:-1] if line.endswith("\n") else line)

    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        if proc.stdin is not None:
            if pending:
                selector.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        while selector.get_map():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout or 0, stderr="".join(lines[stderr_fd]).encode())
            for key, _ in selector.select(remaining):
                if key.fileobj is proc.stdin:
                    try:
                        # PIPE_BUF bytes never block once the pipe reports writable
                        pending = pending[os.write(key.fd, pending[:_PIPE_BUF]) :]
                    except BrokenPipeError:  # the command exited without reading all of its input
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(key.fileobj)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, 65536)
                buffer = partial[key.fd]
                if not data:
                    selector.unregister(key.fileobj)
                    if buffer:
                        emit(key.fd, bytes(buffer))
                    continue
                buffer += data
                *complete, rest = buffer.split(b"\n")
                for raw in complete:
                    emit(key.fd, bytes(raw) + b"\n")
                partial[key.fd] = bytearray(rest)
    proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    return "".join(lines[stdout_fd]), "".join(lines[stderr_fd]), "".join(ssh_lines)


def _spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a process in its own process group, so a timeout can kill it with its children (sshpass, ssh)."""
    try:
        return subprocess.Popen(argv, start_new_session=True, **kwargs)
    except FileNotFoundError:
        raise _missing(argv[0], {"ssh": "openssh-client"}.get(argv[0], argv[0])) from None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a process started by :func:`_spawn` with its children, and close our ends of its pipes."""
    # A master started on the way is in a session of its own, so it survives this.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # The master may still hold the other ends (it was handed them for the session), so nobody else closes them.
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _missing(program: str, package: str) -> SSHError:
    return SSHError(f"`{program}` is not installed here; install it (`apt-get install {package}`).")


def _short_control_dir() -> Path:
    """A short private folder for control sockets when the config folder's path is too long for a socket."""
    path = Path(tempfile.gettempdir()) / f"rh-ssh-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SSHError(f"{path} is not a private folder of this user; remove it so runhouse can recreate it.")
    return path


def _option_path(path: Path) -> str:
    """A path as an ssh ``-o`` value: ``%`` escaped (ssh expands %-tokens), quoted when it has spaces."""
    text = str(path).replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _short(command: str, limit: int = 80) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."


def _said(stderr: str, label: str = "ssh said") -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return f"\n{label}:\n  " + "\n  ".join(lines[-10:])
