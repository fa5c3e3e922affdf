"""Ray on one node of a multi-node cluster: start it (head or joining), find it, stop exactly what was started.

Run on each node by the client over SSH (``runhouse ray-node start|stop``, see :mod:`runhouse.cli`); every
answer is one JSON line on stdout. Ray runs with token authentication: the head makes the cluster's token,
the client hands it to the other nodes on stdin, and it lives in ``<runhouse folder>/ray/auth_token`` (0600);
every process runhouse starts (``ray start``, the daemon, the workers) gets :func:`ray_environment`. The
dashboard is off and no other HTTP endpoint is opened (Ray's own ports answer only with the token).

Each node's Ray keeps its own temporary folder (nodes may share a filesystem, as loopback test nodes do) and
runs in a session of its own; the node's record (``ray/node.json``) names that session, so :func:`stop_node`
stops those processes, raylet first, and nothing else of the machine (never ``ray stop``, which stops every
Ray on it). A Ray found running on the head that runhouse did not start is attached to, never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from runhouse.paths import config_dir, write_atomic

DEFAULT_RAY_PORT = 6379
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 5.0
# Options of ``ray start`` a cluster may set for every node, with their flags.
RESOURCE_FLAGS = {
    "num_cpus": "--num-cpus",
    "num_gpus": "--num-gpus",
    "memory": "--memory",
    "object_store_memory": "--object-store-memory",
    "resources": "--resources",
}


def ray_folder(state: Path | None = None) -> Path:
    return (state or config_dir()) / "ray"


def token_path(state: Path | None = None) -> Path:
    """Where this node keeps the cluster's Ray token."""
    return ray_folder(state) / "auth_token"


def ray_environment(state: Path | None = None) -> dict[str, str]:
    """Environment variables every Ray process of this node needs: token auth when the cluster has a token."""
    path = token_path(state)
    if not path.exists():
        return {}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def _record_path(state: Path | None = None) -> Path:
    return ray_folder(state) / "node.json"


def _temp_dir(node_ip: str) -> str:
    """A short temporary folder of this node's Ray (its socket paths must stay under ~100 characters)."""
    digest = hashlib.sha256(f"{config_dir().resolve()}\0{node_ip}".encode()).hexdigest()[:10]
    return f"/tmp/rh-ray-{digest}"


def _write_token(token: str) -> None:
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, token)


def _listening(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1.0):
            return True
    except OSError:
        return False


def read_record() -> dict[str, Any] | None:
    """This node's record of the Ray runhouse started (or attached to) here, or None."""
    try:
        return json.loads(_record_path().read_text())
    except (FileNotFoundError, ValueError):
        return None


def _session_processes(record: Mapping[str, Any]) -> list[psutil.Process]:
    """The live processes of the Ray session a record names: its process group, made since it started (a
    group id the system gave out again later names other processes), and everything they started (Ray's
    workers put themselves in groups of their own; runhouse's workers are their children)."""
    group = []
    for proc in psutil.process_iter(["pid", "name", "create_time"]):
        try:
            if os.getpgid(proc.pid) == record["pgid"] and proc.info["create_time"] >= record["started_at"] - 1:
                group.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    found = {proc.pid: proc for proc in group}
    for proc in group:
        try:
            found.update((child.pid, child) for child in proc.children(recursive=True))
        except psutil.Error:
            continue
    return list(found.values())


def _is_raylet(proc: psutil.Process) -> bool:
    try:
        return "raylet" in proc.name()
    except psutil.Error:
        return False


def _running(record: Mapping[str, Any]) -> bool:
    """Whether the Ray a record names still works here: its raylet lives and, on the head, its GCS answers."""
    raylet = False
    for proc in _session_processes(record):
        try:
            raylet = raylet or (_is_raylet(proc) and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            continue
    if not raylet or not record["head"]:
        return raylet
    host, _, port = str(record["address"]).rpartition(":")
    return _listening(host, int(port))


def start_node(
    node_ip: str,
    head_address: str | None = None,
    port: int = DEFAULT_RAY_PORT,
    options: Mapping[str, Any] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Start Ray on this node: the head (``head_address`` None, on ``node_ip:port``) or a node joining it.

    Already running (this node's record names a live raylet): nothing starts. On the head, a Ray that runhouse
    did not start is attached to (its token, ``~/.ray/auth_token``, is used when it has one). The head makes
    the cluster's token when it has none; a joining node is given it.

    Returns:
        ``{"address", "attached", "started", "token"}`` (``token`` only on the head: the client hands it on).

    Raises:
        RuntimeError: ``ray start`` failed; the message carries its output.
    """
    record = read_record()
    if token:
        _write_token(token)
    if record is not None and record["node_ip"] == node_ip and (record["attached"] or _running(record)):
        return _answer(record, started=False)
    if record is not None:
        stop_node()  # what is left of a Ray that no longer works (its machine stopped, a process was killed)
    head = head_address is None
    address = f"{node_ip}:{port}" if head else str(head_address)
    attached = head and _listening(node_ip, port)
    if attached:
        existing = Path.home() / ".ray" / "auth_token"
        if existing.exists():
            _write_token(existing.read_text().strip())
        else:
            token_path().unlink(missing_ok=True)
        record = {"attached": True, "head": True, "node_ip": node_ip, "address": address, "pgid": 0, "temp_dir": "",
                  "started_at": time.time()}
        _write_record(record)
        return _answer(record, started=False)
    if head and not token_path().exists():
        _write_token(secrets.token_urlsafe(32))
    temp_dir = _temp_dir(node_ip)
    command = [str(Path(sys.executable).with_name("ray")), "start", f"--node-ip-address={node_ip}",
               f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    if head:
        # No autoscaler monitor: the nodes are the machines the cluster names, and the monitor would serve its
        # metrics over HTTP on 0.0.0.0 without any credential once prometheus_client is importable.
        command += ["--head", f"--port={port}", "--include-dashboard=false", "--no-monitor"]
    else:
        command += [f"--address={address}"]
    for key, value in (options or {}).items():
        command.append(f"{RESOURCE_FLAGS[key]}={json.dumps(value) if key == 'resources' else value}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(ray_environment())
    # No metrics exporter: with prometheus_client importable (the daemon's /metrics uses it) each node's agent
    # would serve Ray's metrics over HTTP on 0.0.0.0 without any credential.
    env["RAY_enable_metrics_collection"] = "0"
    # ``ray start`` runs as the leader of a new session: every process it leaves running is in its process group.
    proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    record = {"attached": False, "head": head, "node_ip": node_ip, "address": address, "pgid": proc.pid,
              "temp_dir": temp_dir, "started_at": time.time()}
    _write_record(record)  # before waiting: what it started can be stopped even if this command is killed
    try:
        output, _ = proc.communicate(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    if proc.returncode != 0:
        stop_node()
        raise RuntimeError(f"ray start on {node_ip} failed (exit {proc.returncode}):\n{output[-3000:]}")
    return _answer(record, started=True)


def _write_record(record: Mapping[str, Any]) -> None:
    _record_path().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(_record_path(), json.dumps(record))


def _answer(record: Mapping[str, Any], started: bool) -> dict[str, Any]:
    answer = {"address": record["address"], "attached": record["attached"], "started": started}
    if record["head"] and token_path().exists():
        answer["token"] = token_path().read_text().strip()
    return answer


def stop_node(grace: float = STOP_GRACE_S) -> dict[str, Any]:
    """Stop the Ray runhouse started on this node (raylet first, the rest after, SIGKILL after ``grace``).

    A Ray that was attached to is left running. Returns ``{"stopped": number of processes, "attached"}``.
    """
    record = read_record()
    if record is None:
        return {"stopped": 0, "attached": False}
    _record_path().unlink(missing_ok=True)
    if record["attached"]:
        return {"stopped": 0, "attached": True}
    processes = _session_processes(record)
    raylets = [p for p in processes if _is_raylet(p)]
    for group in (raylets, [p for p in processes if p not in raylets]):
        for proc in group:
            _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=grace)
    return {"stopped": len(processes), "attached": False}


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass
