"""A provisioner for tests: "launches" machines as loopback sshd nodes (tests/support/sshd.py), so an on-demand
cluster's whole lifecycle (launch, bring-up, calls, idle, autostop, launch again, teardown) runs for real here.

Stopping kills a cluster's sshd servers (its disks, the home folders, stay); launching a stopped cluster starts
them again on the same port with the same host keys; deleting also removes its processes and folders.
"""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

import psutil

from runhouse.resources.clusters.provisioning import INIT, STOPPED, UP, LaunchRequest, Machines, Provisioner
from tests.support.sshd import LoopbackNodes

# How long a launch waits for a stopping cluster to be down before starting it again.
STOP_WAIT_S = 30.0


class LoopbackProvisioner(Provisioner):
    """Machines are :class:`LoopbackNodes` under ``root``, one set per cluster name."""

    name = "loopback"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clusters: dict[str, LoopbackNodes] = {}
        self.launches: list[LaunchRequest] = []
        self.autostops: list[tuple[str, float | None, bool]] = []

    def launch(self, request: LaunchRequest) -> Machines:
        self.launches.append(request)
        nodes = self.clusters.get(request.cluster_name)
        if nodes is None:
            folder = self.root / request.cluster_name
            folder.mkdir(parents=True, exist_ok=True)
            nodes = LoopbackNodes(request.num_instances, folder).start()
            self.clusters[request.cluster_name] = nodes
        else:
            deadline = time.monotonic() + STOP_WAIT_S
            while self._machines(nodes).state == INIT and time.monotonic() < deadline:
                time.sleep(0.1)  # still stopping: a machine starts again only once it is down
            for server in nodes.servers:
                if not server.is_running():
                    server.start()
        return self._machines(nodes)

    def _machines(self, nodes: LoopbackNodes) -> Machines:
        if all(server.is_running() for server in nodes.servers):
            state = UP
        else:  # stopped once nothing runs on them any more; stopping until then
            state = INIT if _processes_under(nodes.homes) else STOPPED
        return Machines(state, list(nodes.ips), nodes.user, str(nodes.private_key), nodes.port)

    def status(self, cluster_name: str) -> Machines | None:
        nodes = self.clusters.get(cluster_name)
        return None if nodes is None else self._machines(nodes)

    def stop(self, cluster_name: str) -> None:
        nodes = self.clusters.get(cluster_name)
        if nodes is not None:
            for server in nodes.servers:
                server.kill()
            _kill_under(nodes.homes)

    def down(self, cluster_name: str) -> None:
        nodes = self.clusters.pop(cluster_name, None)
        if nodes is not None:
            nodes.stop()
            _kill_under(nodes.homes)
            shutil.rmtree(self.root / cluster_name, ignore_errors=True)

    def set_autostop(self, cluster_name: str, idle_minutes: float | None, down: bool = False) -> None:
        self.autostops.append((cluster_name, idle_minutes, down))

    def self_stop_command(self, cluster_name: str, down: bool = False) -> str | None:
        """Run on the head: stop this cluster's machines, as a cloud's "stop this instance" does: everything
        started from their folders dies (the daemon running this too) and their sshd servers go away."""
        nodes = self.clusters.get(cluster_name)
        if nodes is None:
            return None
        pids = " ".join(str(server.pid) for server in nodes.servers if server.pid)
        everything = "\n".join(f"pkill -9 -f {shlex.quote(str(home))}" for home in nodes.homes)
        # A script: the homes must not be in the command line of the shell that runs it, or pkill ends it.
        script = self.root / f"stop-{cluster_name}.sh"
        script.write_text(f"kill {pids}\n{everything}\n")
        return f"sh {shlex.quote(str(script))}"


def _processes_under(homes: list[Path]) -> list[psutil.Process]:
    """The processes started from these machines' folders (their daemon, workers, Ray)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(
                str(home) in part for home in homes for part in proc.info["cmdline"] or []
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _kill_under(homes: list[Path]) -> None:
    for proc in _processes_under(homes):
        try:
            proc.kill()
        except psutil.Error:
            continue
