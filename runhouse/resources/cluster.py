"""Clusters: where a daemon runs. This module holds the base class and the directly reached daemon.

A :class:`Cluster` talks to its daemon through a :class:`~runhouse.transport.client.DaemonClient`.
Subclasses that reach the host another way (SSH, on-demand clouds) override :meth:`Cluster.up_if_not`,
:meth:`Cluster._endpoint` and the lifecycle methods; everything else works unchanged on top.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from runhouse import protocol
from runhouse.errors import ClusterUnreachableError, RunhouseError
from runhouse.paths import default_server_port
from runhouse.protocol import Op
from runhouse.resources.clusters import local_daemon
from runhouse.resources.env import Env
from runhouse.resources.resource import Resource
from runhouse.transport.client import DaemonClient, Response, health

CONTROL_TIMEOUT_S = 60.0
ENV_TIMEOUT_S = 1800.0  # installing requirements can be slow
if TYPE_CHECKING:
    from runhouse.resources.data.base import DataSystem

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def print_log(prefix: str) -> Any:
    """A log sink printing each streamed line to stdout behind ``(prefix)``."""

    def sink(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        sys.stdout.write("".join(f"({prefix}) {line}" for line in text.splitlines(keepends=True)))
        sys.stdout.flush()

    return sink


class Cluster(Resource):
    """A machine (or group of machines) running a runhouse daemon.

    Example::

        box = rh.cluster(name="box", host="localhost", server_port=32301)
        box.up_if_not()
        box.put("k", [1, 2]); box.get("k")
    """

    RESOURCE_TYPE = "cluster"

    def __init__(
        self, name: str | None = None, host: str = "localhost", server_port: int | None = None, token: str | None = None
    ) -> None:
        super().__init__(name)
        self.host = host
        self.server_port = server_port or default_server_port()
        self._token = token
        self._client: DaemonClient | None = None
        self._envs_ready: dict[str, dict] = {}  # env name -> spec known to exist on the daemon
        self._checked_up = False

    # --- connection ----------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        """Whether the daemon runs on this machine (and can be started from here)."""
        return self.host in _LOCAL_HOSTS

    @functools.cached_property
    def shares_memory(self) -> bool:
        """Whether large buffers can go to and from the daemon through shared memory (same machine)."""
        from runhouse.serialization import shm_available

        return self.is_local and shm_available()

    def _endpoint(self) -> tuple[str, int]:
        return self.host, self.server_port

    @property
    def client(self) -> DaemonClient:
        if self._client is None:
            host, port = self._endpoint()
            token = self._token or (local_daemon.read_token(self.server_port) if self.is_local else None)
            self._client = DaemonClient(host, port, token)
        return self._client

    def is_up(self) -> bool:
        """Whether the daemon answers its health check."""
        host, port = self._endpoint()
        return health(port, host) is not None

    def up_if_not(self) -> Cluster:
        """Start the daemon if it is not answering (local daemons only, for this cluster type)."""
        if self._checked_up:
            return self
        if not self.is_up():
            if not self.is_local:
                raise ClusterUnreachableError(f"no runhouse daemon answers at {self.host}:{self.server_port}")
            local_daemon.start(self.server_port)
            self._client = None  # the token may have just been created
        self._checked_up = True
        return self

    def restart_server(self) -> Cluster:
        """Restart the daemon; deployed functions, modules and envs come back from its registry."""
        if not self.is_local:
            raise RunhouseError(f"cannot restart the daemon at {self.host}: it is not on this machine")
        local_daemon.stop(self.server_port)
        local_daemon.start(self.server_port)
        self._envs_ready.clear()
        return self

    def teardown(self) -> None:
        """Stop the daemon and its workers."""
        if self.is_local:
            local_daemon.stop(self.server_port)
        self._envs_ready.clear()
        self._checked_up = False

    def request(
        self,
        path: str,
        meta: dict[str, Any] | None = None,
        parts: Sequence[Any] = (),
        on_log: Any = None,
        timeout: float | None = CONTROL_TIMEOUT_S,
    ) -> Response:
        """Send one request to the daemon (see :mod:`runhouse.server.app` for the routes)."""
        return self.client.request(path, meta, parts, on_log, timeout)

    def _control(self, op: str, meta: dict[str, Any] | None = None, parts: Sequence[Any] = (), **kw: Any) -> Any:
        return self.request(protocol.control_path(op), meta, parts, **kw).value()

    def prepare_code(self, spec: dict[str, Any], env: str) -> dict[str, Any]:
        """Make code described by ``spec`` importable on the cluster; returns the spec as the cluster sees it.

        The daemon on this machine imports from the same paths, so nothing needs to move.
        """
        return spec

    def data_system(self) -> DataSystem:
        """The cluster's disk as a data system: reached through the daemon (a local daemon's disk is this one)."""
        from runhouse.resources.data.daemon import DaemonSystem

        return DaemonSystem(self)

    # --- envs ----------------------------------------------------------------------------------------
    def ensure_env(self, env: Env) -> str:
        """Create ``env`` on the daemon unless this client already did; returns its name."""
        spec = env.spec()
        if self._envs_ready.get(spec["name"]) != spec:
            self.up_if_not()
            self._control(Op.ENV, {"env": spec}, on_log=print_log(f"env {spec['name']}"), timeout=ENV_TIMEOUT_S)
            self._envs_ready[spec["name"]] = spec
        return spec["name"]

    # --- key-value store -----------------------------------------------------------------------------
    def put(self, key: str, obj: Any, env: Env | str | None = None) -> None:
        """Store ``obj`` under ``key`` in an env's main worker (the default env unless given)."""
        from runhouse import serialization

        self.up_if_not()
        parts = serialization.serialize(obj, shm=self.shares_memory)
        self._control(Op.PUT, {"key": key, "env": self._env_name(env)}, parts)

    def get(self, key: str, default: Any = ...) -> Any:
        """The value stored under ``key``; for a function, class or instance, a handle to call it."""
        self.up_if_not()
        try:
            response = self.request(protocol.control_path(Op.GET), {"key": key, "shm": self.shares_memory})
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
        self.up_if_not()
        return self._control(Op.KEYS, {"env": self._env_name(env) if env is not None else None})

    def delete(self, keys: str | Sequence[str]) -> list[str]:
        """Delete objects by name; returns the names that existed."""
        self.up_if_not()
        return self._control(Op.DELETE, {"keys": [keys] if isinstance(keys, str) else list(keys)})

    # --- commands ------------------------------------------------------------------------------------
    def run(
        self, commands: str | Sequence[str], env: Env | str | None = None, stream_logs: bool = True
    ) -> list[tuple[int, str, str]]:
        """Run shell commands on the cluster, one after another; returns ``[(returncode, stdout, stderr)]``."""
        return self._run(commands, env, stream_logs, python=False)

    def run_python(
        self, lines: str | Sequence[str], env: Env | str | None = None, stream_logs: bool = True
    ) -> list[tuple[int, str, str]]:
        """Run Python source lines (as one program) in an env's interpreter."""
        source = lines if isinstance(lines, str) else "\n".join(lines)
        return self._run([source], env, stream_logs, python=True)

    def _run(self, commands: str | Sequence[str], env: Env | str | None, stream_logs: bool, python: bool) -> list:
        self.up_if_not()
        cmds = [commands] if isinstance(commands, str) else list(commands)
        meta = {"cmds": cmds, "env": self._env_name(env), "stream_logs": stream_logs, "python": python}
        on_log = print_log(self.name or self.host) if stream_logs else None
        results = self._control(Op.RUN, meta, on_log=on_log, timeout=None)
        return [tuple(r) for r in results]

    def status(self) -> dict[str, Any]:
        """The daemon's envs, objects, workers (pid, memory) and uptime."""
        self.up_if_not()
        return self._control(Op.STATUS)

    def _env_name(self, env: Env | str | Sequence[str] | None) -> str | None:
        """The name of an env given as an Env (created here if needed), a name, or a list of requirements."""
        if env is None or isinstance(env, str):
            return env
        if not isinstance(env, Env):
            env = Env(reqs=list(env))
        return self.ensure_env(env)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "host": self.host, "server_port": self.server_port}

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> Cluster:
        return cls(name=config.get("name"), host=config["host"], server_port=config["server_port"])

    def __repr__(self) -> str:
        return f"<Cluster {self.rns_address or self.name!r} at {self.host}:{self.server_port}>"


def cluster(
    name: str | None = None,
    host: str | None = None,
    server_port: int | None = None,
    token: str | None = None,
    dryrun: bool = False,
    ips: Sequence[str] | None = None,
    ssh_creds: dict[str, Any] | None = None,
    **ssh_options: Any,
) -> Cluster:
    """A cluster whose daemon is reached directly at ``host:server_port`` (default: this machine).

    With ``ips`` (and ``ssh_creds``), a machine you bring, reached over SSH (see
    :class:`~runhouse.resources.ssh_cluster.SSHCluster` for its options). Called with only a name, loads
    the cluster saved under it. Nothing connects until first use.

    Example::

        box = rh.cluster(name="box", host="localhost", server_port=32301).up_if_not()
        rh.cluster(name="box")   # the same cluster, once saved with box.save()
    """
    if ips:
        from runhouse.resources.ssh_cluster import SSHCluster

        return SSHCluster(name=name, ips=ips, ssh_creds=ssh_creds, server_port=server_port, token=token, **ssh_options)
    if ssh_creds or ssh_options:
        raise ValueError("ssh_creds and SSH options need ips=[...] (the hosts to reach over SSH)")
    if name is not None and host is None and server_port is None and token is None:
        from runhouse.resources.resource import load_typed

        return load_typed(Cluster, name, dryrun=dryrun)
    return Cluster(name=name, host=host or "localhost", server_port=server_port, token=token)


_here: dict[int, Cluster] = {}


def here() -> Cluster:
    """This machine's daemon (port ``$RH_SERVER_PORT``, default 32300)."""
    port = default_server_port()
    if port not in _here:
        _here[port] = Cluster(name="here", host="localhost", server_port=port)
    return _here[port]

