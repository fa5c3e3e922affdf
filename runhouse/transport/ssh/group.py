"""Several hosts at once: one operation on every host's connection, a result per host, one error for failures."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from runhouse.errors import HostGroupError
from runhouse.lifetime import Closeable
from runhouse.transport.ssh.connection import DEFAULT_COMMAND_TIMEOUT_S, CommandResult, SSHConnection, SSHCredentials

# A host group runs at most this many hosts' operations at a time (each one a local ssh or rsync process).
DEFAULT_GROUP_CONCURRENCY = 32
_T = TypeVar("_T")


class HostGroup(Closeable):
    """Connections to several hosts, each operation run on all of them at once; a context manager.

    Hosts keep the order they were given in and are keyed by ``creds.address`` (``host:port``). Each is
    given as :class:`SSHCredentials` (the group makes the connection, and :meth:`close` ends it) or as an
    existing :class:`SSHConnection` (shared with its owner, for example a cluster's head node, and left open
    by :meth:`close`). Operations run in threads, at most ``max_concurrency`` hosts at a time, each with its
    own timeout. They return ``{address: outcome}`` in the group's order; when any host fails they raise one
    :class:`HostGroupError` whose ``results`` holds every host's outcome (the exception where it failed).

    Example::

        with HostGroup([SSHCredentials("10.0.0.5"), SSHCredentials("10.0.0.6")]) as group:
            group.run("nproc", check=True)  # {"10.0.0.5:22": CommandResult(...), "10.0.0.6:22": ...}

    Raises:
        ValueError: no hosts, two hosts with the same address, or ``max_concurrency`` below 1.
    """

    def __init__(
        self,
        hosts: Sequence[SSHCredentials | SSHConnection],
        *,
        control_dir: Path | None = None,
        max_concurrency: int = DEFAULT_GROUP_CONCURRENCY,
    ) -> None:
        if not hosts:
            raise ValueError("a host group needs at least one host")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency!r}")
        connections: dict[str, SSHConnection] = {}
        self._owned: list[SSHConnection] = []
        for host in hosts:
            if isinstance(host, SSHConnection):
                connection = host
            else:
                connection = SSHConnection(host, control_dir=control_dir)
                self._owned.append(connection)
            address = connection.creds.address
            if address in connections:
                raise ValueError(f"{address} is in the host group twice; each host may appear once")
            connections[address] = connection
        self._connections = MappingProxyType(connections)
        self._max_concurrency = max_concurrency

    def __repr__(self) -> str:
        return f"HostGroup({', '.join(self._connections)})"

    def __len__(self) -> int:
        return len(self._connections)


    @property
    def connections(self) -> Mapping[str, SSHConnection]:
        """Each host's connection by address, in the group's order (read-only)."""
        return self._connections

    def check(self) -> None:
        """Connect to every host now (or confirm its master is up), as :meth:`SSHConnection.check` does.

        Raises:
            HostGroupError: some hosts could not be reached; ``results`` holds None for the connected ones.
        """
        self.on_every_host(lambda connection: connection.check())

    def run(
        self,
        command: str,
        *,
        timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
        check: bool = False,
        input: bytes | None = None,
    ) -> dict[str, CommandResult]:
        """Run ``command`` on every host at once, as :meth:`SSHConnection.run` does on one.

        Args:
            timeout: seconds each host's command may take before its ssh process is killed.
            check: count a non-zero exit as that host's failure (an :class:`SSHError` with its stderr).
            input: bytes fed to the command's stdin on every host.

        Returns:
            Each host's result by address, in the group's order.

        Raises:
            HostGroupError: some hosts failed (could not connect, timed out, or exited non-zero with
                ``check``); ``results`` holds every host's result or exception.
        """
        return self.on_every_host(
            lambda connection: connection.run(command, timeout=timeout, check=check, input=input)
        )

    def rsync(
        self,
        source: str,
        destination: str,
        *,
        files_from: Sequence[str] | None = None,
        delete: bool = False,
        excludes: Sequence[str] = (),
        timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
    ) -> dict[str, CommandResult]:
        """Upload local ``source`` to ``destination`` on every host at once, as :meth:`SSHConnection.rsync`.

        Only uploads: fetching from several hosts into one local folder would mix their files.

        Returns:
            Each host's rsync result (its ``--itemize-changes`` listing) by address, in the group's order.

        Raises:
            HostGroupError: rsync failed or timed out on some hosts; ``results`` holds every host's outcome.
        """
        return self.on_every_host(
            lambda connection: connection.rsync(
                source, destination, files_from=files_from, delete=delete, excludes=excludes, timeout=timeout
            )
        )

    def close(self) -> None:
        """End the connections the group made from credentials; connections it was given stay open.

        Safe to call twice; a later operation reconnects.
        """
        self.on_every_host(lambda connection: connection.close(), self._owned)

    def on_every_host(
        self, operation: Callable[[SSHConnection], _T], connections: Sequence[SSHConnection] | None = None
    ) -> dict[str, _T]:
        """``operation`` on each connection (default: all) in threads; its outcomes by address, in order.

        For steps of several commands per host (each bounded by its own timeouts), with the group's reporting.

        Raises:
            HostGroupError: ``operation`` raised on some connections.
        """
        targets = list(self._connections.values()) if connections is None else list(connections)
        if not targets:
            return {}
        workers = min(self._max_concurrency, len(targets))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rh-host-group") as pool:
            futures = {connection.creds.address: pool.submit(operation, connection) for connection in targets}
        # The pool has shut down, so every future is done (each operation is bounded by its own timeout).
        results: dict[str, _T] = {}
        outcomes: dict[str, object] = {}
        for address, future in futures.items():
            error = future.exception()
            if error is None:
                results[address] = outcomes[address] = future.result()
            else:
                outcomes[address] = error
        if len(results) < len(outcomes):
            raise HostGroupError(outcomes)
        return results
