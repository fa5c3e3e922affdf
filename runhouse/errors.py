"""The one exception hierarchy of runhouse.

::

    RunhouseError
    ├── ConfigError                    bad local configuration or state
    │   └── MissingCredentialsError    an object store (s3, gs) or secret provider found no credentials
    ├── InvalidNameError (ValueError)  a resource or object name that is not allowed
    ├── PackageError (ValueError)      rh.package input that is no package: not a package folder, an option
    ├── SerializationError (TypeError) an argument or result that cannot be pickled
    ├── DaemonError                    the daemon answered with an error (carries its HTTP status)
    │   ├── AuthenticationError        no token or a wrong one (401)
    │   ├── BadRequestError (ValueError)        malformed request (400)
    │   ├── PermissionDeniedError (PermissionError)  known caller, not allowed (403, Den)
    │   ├── ObjectNotFoundError (KeyError)      unknown object, method or key (404)
    │   ├── ConflictError                       name taken, or a concurrent change won (409, Den)
    │   └── PayloadTooLargeError                a config or body over the cap (413, Den)
    ├── ClusterUnreachableError (ConnectionError)   nothing answers at the cluster's address
    ├── ClusterVersionError            the cluster's daemon runs another build, and upgrading was not allowed
    ├── ProvisioningError              on-demand machines could not be made or found (names the fix: install, sky check)
    ├── DenUnreachableError (ConnectionError)       nothing answers at Den's URL
    ├── DataNotFoundError (FileNotFoundError)      nothing at a data resource's path
    ├── SSHError                       an SSH step failed (carries the host and the command's stderr)
    │   ├── SSHConnectionError (ConnectionError)   host down, port closed, name not found
    │   ├── SSHAuthenticationError     the key or password was refused
    │   ├── HostKeyError               unknown host (not accepted) or a changed host key
    │   ├── SSHTimeoutError (TimeoutError)         an SSH step ran past its timeout
    │   └── HostGroupError             a command failed on some hosts of a group (carries every host's outcome)
    ├── DaemonStartError               the daemon did not come up (carries the last log lines)
    ├── NotebookError                  JupyterLab on a cluster did not start or answer (carries the last log lines)
    ├── PortInUseError (OSError)       a port needed here is taken by another process (carries the port)
    ├── EnvCreationError               an env's packages could not be installed
    ├── WorkerCrashedError             the worker process running a call died (carries exit code / signal)
    │   └── NodeLostError              ... with the node it ran on (a multi-node cluster's machine stopped answering)
    ├── CallTimeoutError (TimeoutError)  a call did not finish within its timeout
    ├── CallCancelledError             a call was cancelled before it finished
    ├── RemoteError                    remote code raised an exception whose type cannot be rebuilt here
    └── MapError                       some items of map/starmap failed (carries every item's outcome)

Exceptions raised by remote code are re-raised as their own type when it can be unpickled here, with the
remote traceback attached as ``__cause__`` (a :class:`RemoteTraceback`); otherwise as :class:`RemoteError`.
"""

from __future__ import annotations

from typing import Any


class RunhouseError(Exception):
    """Root of every error runhouse raises itself."""


class ConfigError(RunhouseError):
    """Local configuration or state is missing or invalid."""


class MissingCredentialsError(ConfigError):
    """An object store or secret provider found no credentials (for s3: the AWS env vars, ``~/.aws`` files or
    ``key``/``secret``)."""


class InvalidNameError(RunhouseError, ValueError):
    """A name that could escape its folder or is otherwise not allowed."""


class PackageError(RunhouseError, ValueError):
    """What was given to ``rh.package`` (or as a requirement) cannot be installed as a package: a folder without
    pyproject.toml, setup.py or setup.cfg, or a spec that is a command-line option (``--index-url ...``)."""


class SerializationError(RunhouseError, TypeError):
    """A value could not be serialized to be sent, or deserialized on arrival."""


class DaemonError(RunhouseError):
    """The daemon refused or failed a request; ``status`` is the HTTP status code."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class AuthenticationError(DaemonError):
    """The request had no token or a wrong one."""

    status = 401


class BadRequestError(DaemonError, ValueError):
    """The request was malformed."""

    status = 400


class ObjectNotFoundError(DaemonError, KeyError):
    """No object, method or key by that name on the cluster."""

    status = 404

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class PermissionDeniedError(DaemonError, PermissionError):
    """The caller is known but may not do this to this address."""

    status = 403


class ConflictError(DaemonError):
    """The name is already taken, or a concurrent request changed the same data first."""

    status = 409


class PayloadTooLargeError(DaemonError):
    """A config or request body is larger than the server accepts."""

    status = 413


class ClusterUnreachableError(RunhouseError, ConnectionError):
    """Nothing answers at the cluster's address."""


class ClusterVersionError(RunhouseError):
    """The daemon on the cluster runs another runhouse build, and upgrading it was not allowed."""


class DenUnreachableError(RunhouseError, ConnectionError):
    """Nothing answers at Den's URL."""


class DataNotFoundError(RunhouseError, FileNotFoundError):
    """No file or folder at a data resource's path; ``system`` and ``path`` say where."""

    def __init__(self, message: str, system: str = "", path: str = "") -> None:
        super().__init__(message)
        self.system = system
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SSHError(RunhouseError):
    """An SSH step failed; ``host`` and ``stderr`` say where and what ssh printed."""

    def __init__(self, message: str, host: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.host = host
        self.stderr = stderr


class SSHConnectionError(SSHError, ConnectionError):
    """The host could not be reached: down, port closed, or name not found."""


class SSHAuthenticationError(SSHError):
    """The host refused the key or password."""


class HostKeyError(SSHError):
    """The host's key is unknown and was not accepted, or (``changed``) it changed since it was recorded."""

    changed: bool = False


class SSHTimeoutError(SSHError, TimeoutError):
    """An SSH step did not finish within its timeout."""


class HostGroupError(SSHError):
    """A command failed on some hosts of a group.

    ``results`` maps every host, in the group's order, to its outcome: the command's result where it ran,
    the exception where it failed; ``failures`` maps just the failed hosts to their exceptions.
    """

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.failures = {host: r for host, r in results.items() if isinstance(r, BaseException)}
        if not self.failures:
            raise ValueError("HostGroupError needs at least one failed host")
        first = next(iter(self.failures))
        super().__init__(
            f"{len(self.failures)} of {len(results)} hosts failed; first failure ({first}): "
            f"{type(self.failures[first]).__name__}: {self.failures[first]}",
            host=first,
        )


class ProvisioningError(RunhouseError):
    """On-demand machines could not be launched, found, stopped or deleted; the message names the fix."""


class DaemonStartError(RunhouseError):
    """The daemon process did not become ready; ``log_tail`` holds the end of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- last lines of the daemon log ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


class NotebookError(RunhouseError):
    """JupyterLab did not start on the cluster, or did not answer through its tunnel; ``log_tail`` holds the end
    of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- last lines of JupyterLab's log ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


class PortInUseError(RunhouseError, OSError):
    """A port this machine needs to listen on (a tunnel's local end, a local server) is taken; ``port`` names it."""

    def __init__(self, message: str, port: int) -> None:
        super().__init__(message)
        self.port = port


class EnvCreationError(RunhouseError):
    """An env could not be created (for example a requirement that does not exist)."""

    status = 422


class WorkerCrashedError(RunhouseError):
    """The worker process running the call died; it has been restarted for the next call."""

    status = 502

    def __init__(self, message: str, exit_code: int | None = None, signal: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.signal = signal


class NodeLostError(WorkerCrashedError):
    """A worker died with its node (the machine, or Ray on it, stopped); ``node`` is the node's address.

    ``map`` retries such items on the other nodes a few times before it reports this error for them.
    """

    def __init__(self, message: str, node: str = "", exit_code: int | None = None, signal: str | None = None) -> None:
        super().__init__(message, exit_code=exit_code, signal=signal)
        self.node = node


class CallTimeoutError(RunhouseError, TimeoutError):
    """A call did not finish within its ``timeout``; it was cancelled on the cluster."""

    status = 504


class CallCancelledError(RunhouseError):
    """A call was cancelled before it finished."""

    status = 499


class RemoteTraceback(Exception):
    """Carries the formatted traceback of an exception raised on the cluster (set as ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\nRemote traceback:\n" + self.tb


class RemoteError(RunhouseError):
    """Remote code raised an exception whose type cannot be rebuilt here."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        return f"{text}\n\nRemote traceback:\n{self.traceback}" if self.traceback else text


class MapError(RunhouseError):
    """Some items of a ``map``/``starmap`` failed.

    ``results`` holds, in input order, each item's return value or the exception it raised;
    ``errors`` maps the index of every failed item to its exception.
    """

    def __init__(self, results: list[Any]) -> None:
        self.results = results
        self.errors = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
        first = min(self.errors)
        super().__init__(
            f"{len(self.errors)} of {len(results)} items failed; first failure (item {first}): "
            f"{type(self.errors[first]).__name__}: {self.errors[first]}"
        )


# Errors the daemon reports by type name, rebuilt on the client with these classes.
BY_NAME: dict[str, type[RunhouseError]] = {
    cls.__name__: cls
    for cls in (
        AuthenticationError,
        BadRequestError,
        PermissionDeniedError,
        ObjectNotFoundError,
        ConflictError,
        PayloadTooLargeError,
        EnvCreationError,
        WorkerCrashedError,
        NodeLostError,
        CallTimeoutError,
        CallCancelledError,
        DaemonError,
        InvalidNameError,
    )
}
