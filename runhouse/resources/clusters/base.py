"""The cluster seam: :class:`Cluster`, the abstract base every kind of cluster fills in.

A cluster is where a daemon runs. Everything a user does with one (deploy, call, put/get, run commands)
is written once here, on top of a few hooks that say how this kind of cluster is reached and managed:

==========================  ======================================================================
hook                        contract
==========================  ======================================================================
``_endpoint()``             the (host, port) the HTTP client connects to (a tunnel's local end, ...)
``_read_token()``           the daemon's bearer token, read where the daemon keeps it
``_ssl_context()``          the TLS context pinning the daemon's certificate, or None for plain HTTP
``_start_daemon()``         bring the daemon up (install, start); raise when this cluster cannot
``_stop_daemon()``          stop the daemon and its workers; raise when this cluster cannot
``_accept_running(health)`` decide about a daemon found running (e.g. replace another build)
``_not_running()``          the error for an operation that finds no daemon and may not start one
``prepare_code(spec, env)`` ship code so the daemon can import it; return the spec as seen there
``data_system()``           the :class:`~runhouse.resources.data.base.DataSystem` of its disk
``close()``                 release connections, tunnels and clients (the daemon keeps running)
==========================  ======================================================================

Who starts a daemon: :meth:`Cluster.up_if_not` does, where the cluster can. An operation (``put``, ``get``,
``run``, creating an env...) does only on clusters that start on use (``rh.here``, SSH clusters); on others
it fails with the :class:`~runhouse.errors.ClusterUnreachableError` of ``_not_running()``, so a handle never
leaves behind a daemon nobody asked for.

Implementations: :class:`~runhouse.resources.clusters.direct.DirectCluster` (a daemon reached at a host and
port; ``up_if_not()`` starts it when it is this machine's) and
:class:`~runhouse.resources.clusters.ssh.SSHCluster` (a machine you bring, reached over SSH). A new kind
(on-demand clouds, Ray clusters) subclasses :class:`Cluster` and fills in the hooks; nothing else switches on
the kind of a cluster.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import os
import re
import ssl
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

from runhouse import progress, protocol
from runhouse.daemon_files import REMOTE_CONFIG_DIR
from runhouse.errors import ClusterUnreachableError, ConfigError, RunhouseError
from runhouse.lifetime import Closeable
from runhouse.paths import default_server_port
from runhouse.protocol import DEFAULT_ENV, LogSink, Op
from runhouse.resources.clusters.notebook import (
    DEFAULT_NOTEBOOK_PORT,
    LocalHost,
    NotebookHost,
    NotebookServer,
    start_notebook,
)
from runhouse.resources.env import Env, Requirement
from runhouse.resources.package import packages_from
from runhouse.resources.resource import Resource
from runhouse.transport.client import (
    CALL_READ_TIMEOUT_S,
    RECONNECT_WINDOW_S,
    DaemonClient,
    ItemsSink,
    Response,
    answer_wait,
    health,
)
from runhouse.transport.direct import DirectCalls

if TYPE_CHECKING:
    from runhouse.resources.data.base import DataSystem

CONTROL_TIMEOUT_S = 60.0
# Set to 0 to send every call through the daemon (calls from this machine go straight to workers by default).
DIRECT_CALLS_ENV = "RH_DIRECT_CALLS"
ENV_TIMEOUT_S = 1800.0  # installing requirements can be slow
HEALTH_CHECK_TIMEOUT_S = 2.0
FOLLOW_POLL_S = 0.5  # how often follow_logs asks for a running run's new output
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def print_log(prefix: str) -> LogSink:
    """A log sink printing streamed output to stdout, each line (and each line a ``\r`` starts again, as a
    progress bar does) behind ``(prefix)``; a partial line is printed as it comes."""
    tag = f"({prefix}) "
    line_start = True

    def sink(data: bytes) -> None:
        nonlocal line_start
        out = []
        for piece in _LINE_ENDS.split(data.decode("utf-8", "replace")):
            if piece == "\r":  # a progress bar going back to the line's start: nothing to tag yet
                out.append(piece)
                line_start = True
            elif piece:
                out.append(tag + piece if line_start else piece)
                line_start = piece.endswith(("\n", "\r"))
        sys.stdout.write("".join(out))
        sys.stdout.flush()

    return sink


# Where streamed output is cut into pieces that each end a line: after a newline, or a carriage return not
# followed by one.
_LINE_ENDS = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")


def progress_log(prefix: str) -> LogSink:
    """:func:`print_log` for progress (installers, bring-up notices): silent in quiet mode
    (:mod:`runhouse.progress`). A call's own logs (``stream_logs``) use :func:`print_log` itself."""
    if progress.quiet():
        return lambda data: None
    return print_log(prefix)


class Cluster(Resource, Closeable):
    """A machine (or group of machines) running a runhouse daemon; the kinds of clusters fill in the hooks.

    Create one with :func:`runhouse.cluster`. Clusters are context managers: leaving the block closes the
    connections (the daemon keeps running; :meth:`teardown` stops it).

    Example::

        with rh.cluster(name="box", host="localhost", server_port=32301).up_if_not() as box:
            box.put("k", [1, 2]); box.get("k")
    """

    RESOURCE_TYPE = "cluster"
    # How long a request keeps retrying a refused connection (a daemon restarting); 0 fails at once.
    RECONNECT_WINDOW_S: ClassVar[float] = RECONNECT_WINDOW_S
    # Whether an operation starts a daemon that is not running (otherwise only up_if_not() does).
    _starts_on_use: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Cluster:
        if cls is Cluster:
            raise TypeError(
                "rh.Cluster is the base of every kind of cluster; make one with rh.cluster(...): host= and "
                "server_port= for a daemon reached directly, ips= and ssh_creds= for machines over SSH"
            )
        return super().__new__(cls)

    def __init__(
        self,
        name: str | None = None,
        server_port: int | None = None,
        token: str | None = None,
        default_env: Env | str | None = None,
        den_auth: bool = False,
    ) -> None:
        super().__init__(name)
        if not isinstance(den_auth, bool):
            raise TypeError(f"den_auth is True or False, not {den_auth!r}")
        self.server_port = server_port or default_server_port()
        self._token = token
        # Whether the daemon also accepts the Den tokens of users the cluster is shared with in Den.
        self.den_auth = den_auth
        if isinstance(default_env, dict):  # as saved in a config
            default_env = Env.from_config(default_env) if "resource_type" in default_env else Env(**default_env)
        if default_env is not None and not isinstance(default_env, (Env, str)):
            raise TypeError(f"default_env is an rh.env(...) or an env's name, not {default_env!r}")
        self.default_env = default_env  # the env every call, put and command uses unless told otherwise
        self._client: DaemonClient | None = None
        self._direct: DirectCalls | None = None
        self._envs_ready: dict[str, dict] = {}  # env name -> spec known to exist on the daemon
        self._checked_up = False

    # --- the hooks ---------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def host(self) -> str:
        """The host name or address of the (head) machine, as shown to people."""

    @abc.abstractmethod
    def _endpoint(self) -> tuple[str, int]:
        """The ``(host, port)`` the HTTP client connects to, opening whatever leads there (a tunnel).

        Called whenever a client is made; must be cheap once the way there is open.
        """

    @abc.abstractmethod
    def _read_token(self) -> str | None:
        """The daemon's bearer token, read where the daemon keeps it (None when it has none yet)."""

    def _ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context trusting the daemon's certificate, or None when the client speaks plain HTTP."""
        return None

    @abc.abstractmethod
    def _start_daemon(self) -> None:
        """Bring the daemon up (installing runhouse first where needed) and return once it answers.

        Raises:
            ClusterUnreachableError: this kind of cluster cannot start a daemon at its address.
            DaemonStartError: it did not come up; carries the end of its log.
        """

    @abc.abstractmethod
    def _stop_daemon(self) -> None:
        """Stop the daemon and its workers (nothing happens when it is not running).

        Raises:
            RunhouseError: this cluster cannot stop its daemon (it is not on a machine it controls).
        """

    def _accept_running(self, answer: dict[str, Any]) -> None:
        """Decide about a daemon found running (``answer`` is its ``/health``): by default use it as it is."""

    def _not_running(self) -> ClusterUnreachableError:
        """The error for an operation that finds no daemon and may not start one: where, and how to start it."""
        return ClusterUnreachableError(
            f"no runhouse daemon answers at {self.host}:{self.server_port}; start it on {self.host} "
            f"(`runhouse start --port {self.server_port}`)"
        )

    def prepare_code(self, spec: dict[str, Any], env: str) -> dict[str, Any]:
        """Make code described by ``spec`` importable on the cluster; returns the spec as the cluster sees it.

        By default the daemon imports from the same paths as this process, so nothing moves.
        """
        return spec

    @abc.abstractmethod
    def data_system(self) -> DataSystem:
        """The cluster's disk as a data system (for folders, blobs and tables on it)."""

    def close(self) -> None:
        """Close this cluster's connections (the daemon keeps running); the next use reconnects."""
        if self._client is not None:
            self._client.close()
        self._client = None
        if self._direct is not None:
            self._direct.close()
        self._checked_up = False
        self._envs_ready.clear()

    # --- connection --------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        """Whether the daemon runs on this machine (so its files and memory are this machine's)."""
        return self.host in LOCAL_HOSTS

    @functools.cached_property
    def shares_memory(self) -> bool:
        """Whether large buffers can go to and from the daemon through shared memory (same machine)."""
        from runhouse.serialization import shm_available

        return self.is_local and shm_available()

    @property
    def direct_calls(self) -> DirectCalls | None:
        """Calls straight to env workers, for a daemon on this machine whose own token this client holds (None:
        every call goes through the daemon; also with ``RH_DIRECT_CALLS=0``); see :mod:`runhouse.transport.direct`."""
        if os.environ.get(DIRECT_CALLS_ENV) == "0":
            return None
        if self._direct is None and self.shares_memory:
            token = self._token or self._read_token()
            if token:
                self._direct = DirectCalls(token)
        return self._direct

    @property
    def client(self) -> DaemonClient:
        """The HTTP client of the daemon (made on first use, after the endpoint is open)."""
        if self._client is None:
            host, port = self._endpoint()
            self._client = DaemonClient(
                host,
                port,
                self._client_token(),
                reconnect_window=self.RECONNECT_WINDOW_S,
                ssl_context=self._ssl_context(),
            )
        return self._client

    def _client_token(self) -> str | None:
        """The daemon's token where this client can read it; else, on a Den-auth cluster, the user's Den token
        (the daemon asks Den what that user may do on the cluster)."""
        token = self._token or self._read_token()
        if token is None and self.den_auth:
            from runhouse.config import configs

            token = configs.get("token")
        return token

    def _health(self) -> dict[str, Any] | None:
        host, port = self._endpoint()
        return health(port, host, timeout=HEALTH_CHECK_TIMEOUT_S, ssl_context=self._ssl_context())

    def is_up(self) -> bool:
        """Whether the daemon answers its health check."""
        return self._health() is not None

    def up_if_not(self) -> Cluster:
        """Bring the daemon up unless it already answers (starting it, where this cluster can); returns self."""
        self._ensure_up(start=True)
        if self.den_auth and (self._token or self._read_token()) is not None:
            self._sync_den_auth()
        return self

    def _ensure_up(self, start: bool = False) -> None:
        """Make sure the daemon answers before an operation (checked once per connection).

        A daemon that does not answer is started when ``start`` is true or the cluster starts on use;
        otherwise it is :meth:`_not_running`'s error.
        """
        if self._checked_up:
            return
        answer = self._health()
        if answer is None:
            if not (start or self._starts_on_use):
                raise self._not_running()
            self._start_daemon()
            self._report_launch()
        else:
            self._accept_running(answer)
        self._client = None  # the token (or the tunnel) may have just been made
        self._checked_up = True

    # --- Den ---------------------------------------------------------------------------------------------
    def _den_address(self) -> str:
        """The cluster's Den address; :class:`ConfigError` when it is not saved in Den."""
        address = self.rns_address
        if not address or not address.startswith("/"):
            raise ConfigError(
                f"Den auth needs the cluster saved in Den (Den says who may use it, by its address); "
                f"{self.name or 'this cluster'} is {'saved at ' + address if address else 'not saved'}: save it "
                f"in Den first, e.g. cluster.save('@/{self.name or 'my_cluster'}'), then enable Den auth"
            )
        return address

    def enable_den_auth(self) -> Cluster:
        """Let the daemon also accept the Den tokens of users this cluster is shared with in Den: read access
        lets them call what is deployed on it, write access also deploy, run commands, put/delete and change
        envs. The cluster must be saved in Den, and this client hold the daemon's token. Returns self.

        The daemon reports its status and usage (requests per user and hour) to Den, readable by those who can
        read the cluster. The setting is saved in the cluster's config (so teammates who load it send their
        Den token) and kept by the daemon across restarts.

        Example::

            gpu = rh.cluster(name="gpu", ips=["10.0.0.5"], ssh_creds={...}).save("@/gpu")
            gpu.enable_den_auth().share(["bob"], access_level="read")

        Raises:
            ConfigError: the cluster is not saved in Den, or this client is not logged in to Den.
            DenUnreachableError: the daemon could not reach Den at the URL this client uses.
        """
        from runhouse.errors import ObjectNotFoundError
        from runhouse.rns.den_client import den_client

        address = self._den_address()
        den = den_client()
        try:
            key = den.cluster_key(address)
        except ObjectNotFoundError:
            raise ConfigError(f"{address} is not saved in Den: save the cluster first (cluster.save()), then "
                              "enable Den auth") from None
        if not self.den_auth:
            self.den_auth = True
            self.save()
        self._ensure_up()
        self._control(Op.DEN_AUTH, {"den_url": den.url, "address": address, "heartbeat_key": key})
        return self

    def _sync_den_auth(self) -> None:
        """Enable Den auth on the daemon unless it already accepts Den tokens for this cluster at this Den."""
        from runhouse.config import configs

        address = self._den_address()
        current = self._control(Op.DEN_AUTH)
        den_url = (configs.get("den_url") or "").rstrip("/")
        if current != {"den_url": den_url, "address": address}:
            self.enable_den_auth()

    def den_usage(self) -> dict[str, Any]:
        """What Den knows of this cluster's use: launches (who, when, from where), its last heartbeat
        (status) and requests per user and hour (``usage``); for those who may read it in Den."""
        from runhouse.rns.den_client import den_client

        return den_client().cluster(self._den_address())

    def _report_launch(self) -> None:
        """Tell Den who brought the cluster up, from where (for a cluster saved in Den; never failing)."""
        try:
            address = self._den_address()
        except ConfigError:
            return
        import getpass
        import socket

        from runhouse.rns.den_client import den_client

        try:
            den_client().record_launch(address, f"{getpass.getuser()}@{socket.gethostname()}"[:255])
        except RunhouseError as exc:  # Den down, not logged in, no write access: the cluster is up all the same
            progress_log(self.name or self.host)(f"launch not recorded in Den: {exc}\n".encode())

    def restart_server(self) -> Cluster:
        """Restart the daemon; deployed envs, functions and modules come back from its registry."""
        self._stop_daemon()
        self._checked_up = False
        self._envs_ready.clear()
        return self.up_if_not()

    def restart_grpc_server(self) -> Cluster:
        """Runhouse's documented name for :meth:`restart_server`."""
        return self.restart_server()

    def ssh_tunnel(self, local_port: int | None = None, remote_port: int | None = None) -> Any:
        """Forward a local port to a port of the cluster (SSH clusters); a cluster reached directly has nothing
        to forward through."""
        raise RunhouseError(
            f"{self.name or self.host} is reached directly at {self.host}:{self.server_port}, not over SSH, so there "
            f"is no tunnel to open: connect to {self.host}:{remote_port or self.server_port} itself"
        )

    def notebook(
        self,
        persist: bool = False,
        sync_package_on_close: str | None = None,
        port_forward: int = DEFAULT_NOTEBOOK_PORT,
        *,
        env: Env | str | None = None,
    ) -> NotebookServer:
        """Start JupyterLab on the cluster and open it here at ``http://127.0.0.1:{port_forward}`` (the URL with its
        token is printed); installs JupyterLab into ``env``'s interpreter (the cluster's ``default_env``) when it
        lacks it. Use as a context manager: leaving the block stops JupyterLab, its kernels and the tunnel;
        ``.wait()`` blocks until Ctrl-C, then does the same (as ``runhouse notebook CLUSTER`` does). Keep the
        returned server: once nothing holds it (or this interpreter exits), JupyterLab is stopped too.

        JupyterLab binds 127.0.0.1 on the cluster with a new random token; an SSH cluster forwards it through its
        SSH connection, a daemon on this machine runs it on ``port_forward`` itself. ``persist=True`` and
        ``sync_package_on_close`` (Runhouse's other arguments) are refused with a ValueError saying what to do.

        Example::

            with gpu.notebook(port_forward=8888) as nb:
                print(nb.url)   # open it in a browser; the kernels run on gpu

        Raises:
            PortInUseError: ``port_forward`` is taken here.
            NotebookError: JupyterLab did not start or answer (carries the end of its log).
            ClusterUnreachableError: a daemon on another machine reached without SSH (nothing to forward through).
        """
        return start_notebook(self, self._notebook_host(), port_forward, env, persist, sync_package_on_close)

    def _notebook_host(self) -> NotebookHost:
        """Where JupyterLab runs and how its port is reached here: this machine for a daemon on it; an SSH
        cluster connects and forwards through its connection."""
        if not self.is_local:
            raise ClusterUnreachableError(
                f"{self.name or self.host} is reached directly at {self.host}:{self.server_port}, not over SSH, so "
                "JupyterLab's port there cannot be forwarded here: use it as an SSH cluster (rh.cluster(ips=..., "
                "ssh_creds=...)), or run `runhouse notebook here` on that machine"
            )
        return LocalHost()

    def teardown(self) -> None:
        """Stop the daemon and its workers, then close the connections (also when stopping failed)."""
        try:
            self._stop_daemon()
        finally:
            self.close()

    def request(
        self,
        path: str,
        meta: dict[str, Any] | None = None,
        parts: Sequence[Any] = (),
        on_log: LogSink | None = None,
        timeout: float = CONTROL_TIMEOUT_S,
        on_items: ItemsSink | None = None,
    ) -> Response:
        """Send one request to the daemon (the routes are :mod:`runhouse.protocol`'s)."""
        return self.client.request(path, meta, parts, on_log, timeout, on_items)

    def _control(self, op: str, meta: dict[str, Any] | None = None, parts: Sequence[Any] = (), **kw: Any) -> Any:
        return self.request(protocol.control_path(op), meta, parts, **kw).value()

    # --- envs --------------------------------------------------------------------------------------
    def ensure_env(self, env: Env) -> str:
        """Create ``env`` on the daemon unless this client already did, then install its local packages; returns
        its name."""
        spec = env.spec()
        name = spec["name"]
        if self._envs_ready.get(name) != spec:
            self._ensure_up()
            installs = spec.get("reqs") or env.packages  # only then can it take long enough to show
            with progress.step(f"env {name} ready on {self.name or self.host}") if installs else nullcontext():
                self._control(Op.ENV, {"env": spec}, on_log=progress_log(f"env {name}"), timeout=ENV_TIMEOUT_S)
                if env.packages:
                    self.install_packages(env.packages, env=name)
            self._envs_ready[name] = spec
        return name

    def install_packages(
        self, reqs: Requirement | Sequence[Requirement], env: Env | str | None = None
    ) -> dict[str, list[str]]:
        """Install packages into an env's interpreter on the cluster (the cluster's ``default_env``, else the
        default env, when ``env`` is None); returns the install targets ``installed`` and ``skipped``.

        ``reqs`` is one or a list of: local package folders (shipped like deployed code, only when changed;
        used in place on this machine's daemon; installed editable), git URLs, pip requirements, and
        ``rh.package(...)`` objects; a single string is one package. The env's interpreter is its venv (shared
        by envs with the same ``reqs``), or for an env without ``reqs`` the daemon's own. An unchanged folder or
        requirement installed before is skipped; otherwise the workers of the envs on that interpreter restart
        (values stored with ``put`` in them are lost) so they import the new code.

        Example::

            gpu.install_packages([rh.package("./my_pkg"), "numpy>=1.26"], env=my_env)

        Raises:
            EnvCreationError: the installer failed; nothing was recorded as installed; carries its last lines.
            PackageError, DataNotFoundError: a package that is not one (see :func:`runhouse.package`).
        """
        packages = packages_from(reqs)
        self._ensure_up()
        name = self._env_name(env) or DEFAULT_ENV
        with progress.step(f"install {', '.join(p.install_target for p in packages)} into env {name}"):
            installs = [package.install_spec(self, name) for package in packages]
            return self._control(Op.INSTALL, {"env": name, "packages": installs},
                                 on_log=progress_log(f"env {name}"), timeout=ENV_TIMEOUT_S)

    def _env_name(self, env: Env | str | Sequence[str] | None) -> str | None:
        """The name of an env given as an Env (created here if needed), a name, or a list of requirements; the
        cluster's ``default_env`` when none is given."""
        if env is None:
            env = self.default_env
        if env is None or isinstance(env, str):
            return env
        if not isinstance(env, Env):
            env = Env(reqs=list(env))
        return self.ensure_env(env)

    # --- key-value store ---------------------------------------------------------------------------
    def put(self, key: str, obj: Any, env: Env | str | None = None) -> None:
        """Store ``obj`` under ``key`` in an env's main worker (the default env unless given)."""
        from runhouse import serialization

        self._ensure_up()
        parts = serialization.serialize(obj, shm=self.shares_memory)
        try:
            self._control(Op.PUT, {"key": key, "env": self._env_name(env)}, parts)
        except BaseException:  # its shared-memory files may never be read
            serialization.discard(parts)
            raise

    def get(self, key: str, default: Any = ..., timeout: float | None = None) -> Any:
        """The value stored under ``key``; for a function, class or instance, a handle to call it.

        The value of a ref (``.remote()``) whose call still runs is waited for, at most ``timeout`` seconds
        when given (then :class:`~runhouse.errors.CallTimeoutError`; the call keeps running).
        """
        self._ensure_up()
        meta: dict[str, Any] = {"key": key, "shm": self.shares_memory}
        if timeout is not None:
            meta["timeout"] = timeout
        try:
            response = self.request(protocol.control_path(Op.GET), meta, timeout=answer_wait(timeout))
        except KeyError:
            if default is ...:
                raise
            return default
        if response.headers.get(protocol.KIND_HEADER) == protocol.HANDLE_KIND:
            from runhouse.resources.remote import handle_for

            return handle_for(self, key, response.value())
        return response.value()

    def keys(self, env: Env | str | None = None) -> list[str]:
        """Names of the objects on the cluster (in one env when given)."""
        self._ensure_up()
        return self._control(Op.KEYS, {"env": self._env_name(env) if env is not None else None})

    def delete(self, keys: str | Sequence[str]) -> list[str]:
        """Delete objects by name, or envs (their workers stop, the objects in them go too); returns the names
        that existed."""
        self._ensure_up()
        names = [keys] if isinstance(keys, str) else list(keys)
        deleted = self._control(Op.DELETE, {"keys": names})
        for name in deleted:
            self._envs_ready.pop(name, None)
        return deleted

    # --- commands ----------------------------------------------------------------------------------
    def run(
        self,
        commands: str | Sequence[str],
        env: Env | str | None = None,
        stream_logs: bool = True,
        timeout: float = CALL_READ_TIMEOUT_S,
        run_name: str | None = None,
    ) -> list[tuple[int, str, str]]:
        """Run shell commands on the cluster, one after another; returns ``[(returncode, stdout, stderr)]``.

        ``timeout`` bounds the wait for all of them (seconds); they are one run, named ``run_name`` when given.
        """
        return self._run(commands, env, stream_logs, False, timeout, run_name)

    def run_python(
        self,
        lines: str | Sequence[str],
        env: Env | str | None = None,
        stream_logs: bool = True,
        timeout: float = CALL_READ_TIMEOUT_S,
        run_name: str | None = None,
    ) -> list[tuple[int, str, str]]:
        """Run Python source lines (as one program) in an env's interpreter (one run, named ``run_name``)."""
        source = lines if isinstance(lines, str) else "\n".join(lines)
        return self._run([source], env, stream_logs, True, timeout, run_name)

    def _run(
        self, commands: str | Sequence[str], env: Env | str | None, stream_logs: bool, python: bool, timeout: float,
        run_name: str | None = None,
    ) -> list[tuple[int, str, str]]:
        self._ensure_up()
        cmds = [commands] if isinstance(commands, str) else list(commands)
        meta = {"cmds": cmds, "env": self._env_name(env), "stream_logs": stream_logs, "python": python,
                "run_name": run_name}
        on_log = print_log(self.name or self.host) if stream_logs else None
        results = self._control(Op.RUN, meta, on_log=on_log, timeout=timeout)
        return [tuple(r) for r in results]

    def run_setup(self, commands: Sequence[str], env: Env | str | None = None) -> list[tuple[int, str, str]]:
        """Run setup commands once per cluster (remembered in its runhouse folder): later calls with the same
        commands run nothing and return ``[]``; a failed command is not remembered."""
        digest = hashlib.sha256("\n".join(commands).encode()).hexdigest()[:16]
        folder = f"{REMOTE_CONFIG_DIR}/setup"
        marker = f"{folder}/{digest}"
        if self.run([f"test -f {marker}"], stream_logs=False)[0][0] == 0:
            return []
        results = self.run(list(commands), env=env)
        if all(code == 0 for code, _, _ in results):
            self.run([f"mkdir -p {folder} && touch {marker}"], stream_logs=False)
        return results

    def status(self) -> dict[str, Any]:
        """The daemon's envs, objects, workers (pid, memory), nodes, autostop and uptime."""
        self._ensure_up()
        return self._control(Op.STATUS)

    # --- runs and their logs ------------------------------------------------------------------------
    def runs(self, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` runs kept on the cluster (calls, map batches, commands), newest first; with
        ``name``, only those of the function or instance ``name`` or with the run name ``name``.

        Each is a dict: ``id``, ``name``, ``method``, ``kind``, ``env``, ``pid``, ``caller``, ``run_name``,
        ``started_at``, ``ended_at``, ``duration_s``, ``status`` (running, done, failed, cancelled, crashed),
        ``error`` (a failure's traceback) and the size of its output.
        """
        self._ensure_up()
        return self._control(Op.RUNS, {"name": name, "limit": limit})

    def logs(self, run_id: str) -> str:
        """The output (stdout, stderr and ``logging``) of run ``run_id``, so far when it is still running.

        Raises:
            ObjectNotFoundError: the cluster keeps no run ``run_id`` (the oldest runs are dropped).
        """
        self._ensure_up()
        return self._control(Op.LOGS, {"run_id": run_id})["output"]

    def follow_logs(self, run_id: str, poll_s: float = FOLLOW_POLL_S) -> Iterator[str]:
        """The output of run ``run_id`` as it comes, until the run ends (checked every ``poll_s`` seconds);
        then :meth:`runs` says how it ended."""
        self._ensure_up()
        offset = 0
        while True:
            answer = self._control(Op.LOGS, {"run_id": run_id, "offset": offset})
            if answer["output"]:
                yield answer["output"]
            offset = answer["offset"]
            if answer["run"]["status"] != "running":
                return
            time.sleep(poll_s)

    def keep_warm(self, autostop_mins: float = -1) -> Cluster:
        """Set the daemon's idle timer: after ``autostop_mins`` minutes without a call, command or stream the
        cluster stops (fractions allowed); -1 (the default) keeps it up until told otherwise. Returns self."""
        self._ensure_up()
        self._set_autostop(autostop_mins)
        return self

    def _set_autostop(
        self, minutes: float | None, command: str | None = None, keepalive: str | None = None,
        set_commands: bool = False,
    ) -> None:
        """Set the daemon's idle timer; with ``set_commands``, also its stop and keepalive commands (see
        :mod:`runhouse.server.autostop`)."""
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))):
            raise TypeError(f"autostop_mins is a number of minutes (-1: never), not {minutes!r}")
        meta = {"minutes": -1 if minutes is None else minutes, "command": command, "keepalive": keepalive,
                "set_commands": set_commands}
        self._control(Op.AUTOSTOP, meta)

    # --- config ------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        config = {**super().config(), "server_port": self.server_port}
        if self.den_auth:
            config["den_auth"] = True
        if self.default_env is not None:
            config["default_env"] = self.default_env if isinstance(self.default_env, str) else self.default_env.config()
        return config

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> Cluster:
        # Configs saved before the kinds of clusters were split name the base class: a daemon reached directly.
        from runhouse.resources.clusters.direct import DirectCluster

        return DirectCluster._from_config(config, dryrun)
