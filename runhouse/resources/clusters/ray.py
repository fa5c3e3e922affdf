"""Multi-node clusters: several machines you bring, reached over SSH, made one Ray cluster.

``rh.cluster(ips=[head, node1, ...], ssh_creds=...)`` with more than one ip is a :class:`RayCluster`. Bringing
it up works on every node at once: install this runhouse build with Ray (``runhouse[ray]``), start Ray's head
on ``ips[0]`` (token auth: the head makes the token, the others are handed it over SSH), join the others, then
start the daemon on the head as that Ray cluster's driver (:mod:`runhouse.server.ray_backend`). Calls go to the
head daemon as on any SSH cluster; its workers run on every node. Each node's Ray is started and stopped by
``runhouse ray-node`` there (:mod:`runhouse.server.ray_nodes`): by its own processes, never ``ray stop``, and a
Ray that runhouse did not start is attached to and left running.

Deployed code is synced to every node, at the head's path, so any worker imports it the same way.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections.abc import Mapping, Sequence
from typing import Any

from runhouse import progress, protocol
from runhouse.daemon_files import REMOTE_CONFIG_DIR
from runhouse.errors import DaemonStartError, HostGroupError
from runhouse.protocol import Op
from runhouse.resources.clusters.base import print_log, progress_log
from runhouse.resources.clusters.code import RepoShipper
from runhouse.resources.clusters.ssh import STEP_TIMEOUT_S, STOP_TIMEOUT_S, SSHCluster
from runhouse.transport.client import CALL_READ_TIMEOUT_S
from runhouse.transport.ssh import SSHConnection

DEFAULT_RAY_PORT = 6379
RAY_START_TIMEOUT_S = 180.0
# How long a node brought back may take to show alive in the daemon's view of Ray (it looks every 2 s).
REJOIN_TIMEOUT_S = 30.0
# Options of ``ray start`` a cluster sets on every node (``node_resources``).
NODE_RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "object_store_memory", "resources")
ALL_NODES = "all"


class RayCluster(SSHCluster):
    """Several machines over SSH made one Ray cluster; ``ips[0]`` is the head, where the daemon runs.

    ``node_resources`` sets what each node offers Ray (``num_cpus``, ``num_gpus``, ``memory`` and
    ``object_store_memory`` in bytes, custom ``resources``; default: what Ray detects). ``ray_port`` is the
    head's Ray (GCS) port.

    Example::

        c = rh.cluster(name="pair", ips=["10.0.0.5", "10.0.0.6"], ssh_creds={"ssh_user": "ubuntu"}).up_if_not()
        c.run(["nvidia-smi"], node="all")             # {"10.0.0.5": [(0, "...", "")], "10.0.0.6": [...]}
        rh.function(work).to(c).map(range(1000))      # spread over every node's CPUs
    """

    def __init__(
        self,
        name: str | None = None,
        ips: Sequence[str] = (),
        ssh_creds: Mapping[str, Any] | None = None,
        server_port: int | None = None,
        ray_port: int = DEFAULT_RAY_PORT,
        node_resources: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if len(ips) < 2:
            raise ValueError("a multi-node cluster needs at least two ips (the first is the head node)")
        if len(set(ips)) != len(ips):
            raise ValueError(f"ips lists a node twice: {list(ips)}")
        unknown = sorted(set(node_resources or {}) - set(NODE_RESOURCE_KEYS))
        if unknown:
            raise ValueError(f"unknown node_resources keys {unknown}; allowed: {list(NODE_RESOURCE_KEYS)}")
        if isinstance(ray_port, bool) or not isinstance(ray_port, int) or not 0 < ray_port < 65536:
            raise ValueError(f"ray_port must be a port number 1-65535, not {ray_port!r}")
        super().__init__(name=name, ips=ips, ssh_creds=ssh_creds, server_port=server_port, **options)
        self.ray_port = ray_port
        self.node_resources = dict(node_resources or {})
        self._node_states: dict[str, str] = {}
        self._shippers: dict[str, RepoShipper] = {}

    @property
    def ray_address(self) -> str:
        """The head's Ray address (``ip:port``), which drivers on the cluster's network connect to."""
        return f"{self.host}:{self.ray_port}"

    # --- nodes -------------------------------------------------------------------------------------------
    def _connections(self, indexes: Sequence[int] | None = None) -> list[SSHConnection]:
        connections = list(self.hosts.connections.values())
        return connections if indexes is None else [connections[i] for i in indexes]

    def node_index(self, node: int | str) -> int:
        """The index in ``ips`` of a node given by index or ip.

        Raises:
            ValueError: ``node`` names no node of this cluster.
        """
        if isinstance(node, int) and not isinstance(node, bool) and 0 <= node < len(self.ips):
            return node
        if isinstance(node, str) and node in self.ips:
            return self.ips.index(node)
        listed = ", ".join(f"{i}: {ip}" for i, ip in enumerate(self.ips))
        raise ValueError(f"node={node!r} names no node of this cluster; use an index or an ip of: {listed}")

    def _node_state(self, connection: SSHConnection) -> str:
        """A node's runhouse folder (absolute)."""
        address = connection.creds.address
        if address not in self._node_states:
            if connection is self.ssh_connection:
                self._node_states[address] = self._state()
            else:
                result = connection.run(f"echo {REMOTE_CONFIG_DIR}", timeout=STEP_TIMEOUT_S, check=True)
                self._node_states[address] = result.stdout.strip()
        return self._node_states[address]

    def _node_python(self, connection: SSHConnection) -> str:
        return f"{self._node_state(connection)}/venvs/{self._build()}/bin/python"

    @staticmethod
    def _build() -> str:
        from runhouse.version import build_id

        return build_id()

    def _ray_node(self, connection: SSHConnection, arguments: str, token: str | None = None) -> dict[str, Any]:
        """Run ``runhouse ray-node ARGUMENTS`` on a node; its JSON answer."""
        command = f"{self._node_python(connection)} -m runhouse.cli ray-node {arguments}"
        result = connection.run(command, timeout=RAY_START_TIMEOUT_S, input=(token + "\n").encode() if token else None)
        if result.returncode != 0:
            raise DaemonStartError(f"Ray on {connection.creds.host} failed", (result.stdout + result.stderr)[-3000:])
        return json.loads(result.stdout.strip().splitlines()[-1])

    def _bring_up(self, indexes: Sequence[int]) -> None:
        """Install runhouse with Ray on these nodes, then start Ray there (the head first, when among them)."""
        connections = self._connections(indexes)
        self.hosts.on_every_host(lambda c: self._install(c, self._node_state(c), extra="ray"), connections)
        options = shlex.quote(json.dumps(self.node_resources))
        with progress.step(f"start Ray on the head {self.host}"):
            head = self._ray_node(self.ssh_connection, f"start --node-ip {self.host} --port {self.ray_port} "
                                                       f"--options {options}")
        if head.get("attached"):
            progress_log(self.host)(f"attached to the Ray already running at {head['address']}\n".encode())
        others = [c for i, c in zip(indexes, connections, strict=True) if i != 0]
        try:
            with progress.step(f"join {len(others)} node(s) to Ray") if others else contextlib.nullcontext():
                self.hosts.on_every_host(
                    lambda c: self._ray_node(
                        c, f"start --node-ip {c.creds.host} --address {head['address']} --options {options}"
                        + (" --token-stdin" if head.get("token") else ""), head.get("token")),
                    others,
                )
        except HostGroupError:
            if 0 in indexes and head.get("started"):  # nothing is left half-started: stop what came up
                self._stop_ray(list(indexes))
            else:
                self._stop_ray([i for i in indexes if i != 0])
            raise

    def _stop_ray(self, indexes: Sequence[int] | None = None) -> None:
        """Stop the Ray runhouse started on these nodes (default: all), by its processes on each."""
        self.hosts.on_every_host(
            lambda c: c.run(f"test -x {self._node_python(c)} && {self._node_python(c)} -m runhouse.cli ray-node stop",
                            timeout=STOP_TIMEOUT_S),
            self._connections(indexes),
        )

    # --- the hooks ---------------------------------------------------------------------------------------
    def _start_daemon(self) -> None:
        """Bring every node up (install, Ray) and start the daemon on the head as the Ray cluster's driver."""
        self._bring_up(range(len(self.ips)))
        self._launch_daemon(f"--ray-address {self.ray_address}", f"--node-ips {','.join(self.ips)}")

    def _accept_running(self, answer: dict[str, Any]) -> None:
        """As an SSH cluster does (same build); then nodes that dropped out of Ray are brought back."""
        super()._accept_running(answer)
        dead = self._dead_nodes()
        if dead:
            progress_log(self.host)(f"bringing back nodes {[self.ips[i] for i in dead]}\n".encode())
            self._bring_up(dead)
            deadline = time.monotonic() + REJOIN_TIMEOUT_S
            while self._dead_nodes():  # returns once the daemon places workers there again
                if time.monotonic() > deadline:
                    missing = [self.ips[i] for i in self._dead_nodes()]
                    raise DaemonStartError(f"nodes {missing} joined Ray but the daemon on {self.host} does not see "
                                           f"them alive after {REJOIN_TIMEOUT_S:.0f} s")
                time.sleep(0.5)

    def _dead_nodes(self) -> list[int]:
        """Indexes of the nodes the daemon does not see alive in its Ray cluster."""
        nodes = self.request(protocol.control_path(Op.STATUS)).value()["nodes"]
        return sorted({n["index"] for n in nodes if not n["alive"] and n["index"] is not None})

    def _stop_daemon(self) -> None:
        """Stop the daemon on the head, then the Ray runhouse started on every node (all are tried)."""
        try:
            super()._stop_daemon()
        finally:
            self._stop_ray()

    def restart_server(self) -> RayCluster:
        """Restart the daemon on the head (each node's Ray keeps running); deployed envs and objects come back."""
        SSHCluster._stop_daemon(self)
        self._checked_up = False
        self._envs_ready.clear()
        self.up_if_not()
        return self


    # --- code ------------------------------------------------------------------------------------------
    def prepare_code(self, spec: dict[str, Any], env: str) -> dict[str, Any]:
        """Sync the repo holding the code to every node, at the head's path, and point the spec there."""
        prepared = super().prepare_code(spec, env)
        if prepared is spec or prepared.get("root") == spec.get("root"):
            return prepared
        head_copy = prepared["root"]

        def sync(connection: SSHConnection) -> None:
            shipper = self._shippers.setdefault(connection.creds.address, RepoShipper(lambda: connection, self._state))
            shipper.ship(spec, lambda requirements: None)

        self.hosts.on_every_host(sync, self._connections(range(1, len(self.ips))))
        return {**prepared, "root": head_copy}

    # --- commands --------------------------------------------------------------------------------------
    def run(  # type: ignore[override]
        self,
        commands: str | Sequence[str],
        env: Any = None,
        stream_logs: bool = True,
        timeout: float = CALL_READ_TIMEOUT_S,
        node: int | str | None = None,
    ) -> Any:
        """Run shell commands on a node (default: the head, through its daemon; ``node=`` an index or ip), or on
        every node with ``node="all"``: then ``{ip: [(returncode, stdout, stderr), ...]}``.

        On nodes other than the head, commands run over SSH with the node's runhouse environment (its Ray on
        ``PATH``, ``RAY_ADDRESS`` set); ``env=`` is only for the head.
        """
        if node is None:
            return super().run(commands, env, stream_logs, timeout)
        indexes = list(range(len(self.ips))) if node == ALL_NODES else [self.node_index(node)]
        if env is not None and indexes != [0]:
            raise ValueError("env= runs commands in an env of the head; leave it out for other nodes")
        self._ensure_up()
        cmds = [commands] if isinstance(commands, str) else list(commands)
        results: dict[str, list[tuple[int, str, str]]] = {}
        if 0 in indexes:
            results[self.host] = super().run(cmds, env, stream_logs, timeout)
        others = self._connections([i for i in indexes if i != 0])
        outcomes = self.hosts.on_every_host(lambda c: self._run_on_node(c, cmds, stream_logs, timeout), others)
        by_address = {c.creds.address: c.creds.host for c in others}
        results.update({by_address[address]: outcome for address, outcome in outcomes.items()})
        ordered = {ip: results[ip] for ip in self.ips if ip in results}
        return ordered if node == ALL_NODES else ordered[self.ips[indexes[0]]]

    def _run_on_node(
        self, connection: SSHConnection, cmds: Sequence[str], stream_logs: bool, timeout: float
    ) -> list[tuple[int, str, str]]:
        state = self._node_state(connection)
        prefix = (f"cd ~ && export PATH={self._node_python(connection).rsplit('/', 1)[0]}:$PATH "
                  f"RAY_ADDRESS={self.ray_address}; "
                  f"if [ -f {state}/ray/auth_token ]; then export RAY_AUTH_MODE=token "
                  f"RAY_AUTH_TOKEN_PATH={state}/ray/auth_token; fi; ")
        sink = print_log(connection.creds.host) if stream_logs else None
        out = []
        for cmd in cmds:
            result = connection.run(prefix + cmd, timeout=timeout,
                                    on_output=(lambda line: sink((line + "\n").encode())) if sink else None)
            out.append((result.returncode, result.stdout, result.stderr))
        return out

    # --- config ----------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {**super().config(), "ray_port": self.ray_port, "node_resources": self.node_resources}

    @classmethod
    def _arguments_from_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        return {
            **super()._arguments_from_config(config),
            "ray_port": config.get("ray_port", DEFAULT_RAY_PORT),
            "node_resources": config.get("node_resources"),
        }

    def __repr__(self) -> str:
        return f"<RayCluster {self.rns_address or self.name!r} of {len(self.ips)} nodes, head {self.host}>"
