"""Port forwards on an SSH connection's master, as context managers."""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

from runhouse.errors import SSHError
from runhouse.lifetime import Closeable

if TYPE_CHECKING:
    from runhouse.transport.ssh.connection import SSHConnection


class Tunnel(Closeable):
    """A local port forward on an :class:`SSHConnection`'s master; a context manager.

    ``local_port`` (on 127.0.0.1 here) leads to ``remote_host:remote_port`` as seen from the host. It lasts
    until :meth:`close` or until the master connection ends.
    """

    def __init__(
        self, connection: SSHConnection, spec: str, *, local_port: int, remote_port: int, remote_host: str
    ) -> None:
        self.connection = connection
        self.local_port = local_port
        self.remote_port = remote_port
        self.remote_host = remote_host
        self._spec = spec
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"Tunnel(127.0.0.1:{self.local_port} -> {self.remote_host}:{self.remote_port} via "
            f"{self.connection.creds.address}, {state})"
        )


    def is_open(self, timeout: float = 1.0) -> bool:
        """Whether the local end accepts TCP connections (the master is up and the forward in place)."""
        if self._closed:
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.local_port), timeout=timeout):
                return True
        except OSError:
            return False

    def close(self) -> None:
        """Cancel the forward (``ssh -O cancel``). Never raises: a dead master took the forward with it."""
        if self._closed:
            return
        self._closed = True
        if self.connection.control_path.exists():
            with contextlib.suppress(SSHError):
                self.connection._control("cancel", "-L", self._spec)
