"""A three-node cluster on real Ray and real sshd: nodes are loopback aliases, each with its own home and state.

One cluster is brought up for the module (installs take most of a minute); tests that break a node bring it
back, and the last tests tear it down and attach to a Ray runhouse did not start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

import runhouse as rh
from runhouse.errors import BadRequestError, HostGroupError, MapError
from tests.conftest import free_port
from tests.integration.ray import ray_funcs
from tests.support.sshd import LoopbackNodes

NODE_RESOURCES = {"num_cpus": 1, "memory": 500_000_000, "object_store_memory": 100_000_000}
RAY_PORT = 46379  # not Ray's default: a developer's own Ray on this machine is left alone


def _record(home: Path) -> dict | None:
    try:
        return json.loads((home / ".rh" / "ray" / "node.json").read_text())
    except FileNotFoundError:
        return None


def _group(pgid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _node_processes(home: Path) -> list[psutil.Process]:
    """Every process of a node: its Ray session and all they started (Ray workers, runhouse's workers)."""
    record = _record(home)
    assert record is not None and record["pgid"]
    found = {}
    for proc in _group(record["pgid"]):
        found[proc.pid] = proc
        found.update((child.pid, child) for child in proc.children(recursive=True))
    return list(found.values())


def _kill_node(home: Path) -> None:
    """Kill every process of a node, as if the machine went down."""
    processes = _node_processes(home)
    for proc in processes:
        try:
            proc.send_signal(signal.SIGSTOP)  # none of them notices the others going first
        except psutil.Error:
            pass
    for proc in processes:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout} s: {what}")


def _folders(nodes: LoopbackNodes) -> list[str]:
    return [str(home / ".rh") for home in nodes.homes]


def _processes_under(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(home) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def trio(loopback_nodes: LoopbackNodes):
    cluster = rh.cluster(name="trio", ips=loopback_nodes.ips, ssh_creds=loopback_nodes.ssh_creds(),
                         server_port=free_port(), ray_port=RAY_PORT, node_resources=NODE_RESOURCES)
    began = time.monotonic()
    cluster.up_if_not()
    cluster.first_bring_up_s = time.monotonic() - began
    try:
        yield cluster
    finally:
        cluster.teardown()


def test_bring_up_starts_ray_on_every_node_and_status_lists_them(trio, loopback_nodes):
    print(f"first bring-up of 3 loopback nodes took {trio.first_bring_up_s:.1f} s")
    nodes = trio.status()["nodes"]
    assert [(n["ip"], n["index"], n["alive"], n["cpus"]) for n in nodes] == [
        (ip, i, True, 1.0) for i, ip in enumerate(loopback_nodes.ips)
    ]
    assert all(n["memory_bytes"] == NODE_RESOURCES["memory"] for n in nodes)
    for home in loopback_nodes.homes:
        record = _record(home)
        assert record is not None and not record["attached"] and _group(record["pgid"])
    assert (loopback_nodes.homes[0] / ".rh" / "ray" / "auth_token").stat().st_mode & 0o777 == 0o600


def test_an_up_cluster_is_reused_by_a_new_handle(trio, loopback_nodes):
    heads = _record(loopback_nodes.homes[0])
    pid = trio.status()["pid"]
    again = rh.cluster(name="trio", ips=loopback_nodes.ips, ssh_creds=loopback_nodes.ssh_creds(),
                       server_port=trio.server_port, ray_port=RAY_PORT, node_resources=NODE_RESOURCES)
    began = time.monotonic()
    again.up_if_not()
    print(f"bring-up when already up took {time.monotonic() - began:.2f} s")
    assert again.status()["pid"] == pid
    assert _record(loopback_nodes.homes[0]) == heads
    again.close()


def test_run_on_every_node_and_on_one(trio, loopback_nodes):
    everywhere = trio.run(["echo $HOME", "echo $RAY_ADDRESS"], node="all", stream_logs=False)
    assert list(everywhere) == loopback_nodes.ips
    for ip, home in zip(loopback_nodes.ips, loopback_nodes.homes, strict=True):
        (code, out, _), (_, address, _) = everywhere[ip]
        assert code == 0 and out.strip() == str(home)
        assert address.strip() == f"{loopback_nodes.ips[0]}:{RAY_PORT}"
    assert trio.run(["echo $HOME"], node=1, stream_logs=False) == [(0, f"{loopback_nodes.homes[1]}\n", "")]
    assert trio.run(["echo $HOME"], node=loopback_nodes.ips[2], stream_logs=False)[0][1].strip() == str(
        loopback_nodes.homes[2]
    )
    with pytest.raises(ValueError, match="names no node"):
        trio.run(["true"], node=3)
    with pytest.raises(ValueError, match="names no node"):
        trio.run(["true"], node="10.9.9.9")


def test_map_spreads_over_every_node_with_results_in_order(trio, loopback_nodes):
    fn = rh.function(ray_funcs.where).to(trio)
    results = fn.map(range(60))
    assert [x for x, _ in results] == list(range(60))
    assert {folder for _, folder in results} == set(_folders(loopback_nodes))


def test_cpu_bound_map_runs_one_item_per_cpu_of_each_node(trio, loopback_nodes):
    fn = rh.function(ray_funcs.slow_where).to(trio)
    fn.map([0, 1, 2])  # the pool is up
    began = time.monotonic()
    results = fn.map(range(6), [1.0] * 6)
    took = time.monotonic() - began
    print(f"6 one-second items on 3 one-CPU nodes: {took:.2f} s (ideal 2 s)")
    assert {folder for _, folder in results} == set(_folders(loopback_nodes))
    assert took < 5.5  # serially it is 6 s


def test_env_pinned_to_a_node_holds_a_stateful_instance_there(trio, loopback_nodes):
    side = rh.env(name="side", node=2)
    tally = rh.module(ray_funcs.Tally).to(trio, env=side)(name="tally")
    assert tally.add() == (1, _folders(loopback_nodes)[2])
    assert tally.add() == (2, _folders(loopback_nodes)[2])
    by_ip = rh.module(ray_funcs.Tally).to(trio, env=rh.env(name="side_ip", node=loopback_nodes.ips[1]))(name="t1")
    assert by_ip.add()[1] == _folders(loopback_nodes)[1]
    status = trio.status()
    assert {w["node"] for w in status["workers"] if w["env"] == "side"} == {loopback_nodes.ips[2]}
    assert {e["name"]: e["nodes"] for e in status["envs"]}["side"] == [loopback_nodes.ips[2]]


def test_restart_server_keeps_each_nodes_ray_and_brings_objects_back(trio, loopback_nodes):
    records = [_record(home) for home in loopback_nodes.homes]
    pid = trio.status()["pid"]
    trio.restart_server()
    assert trio.status()["pid"] != pid
    assert [_record(home) for home in loopback_nodes.homes] == records
    tally = trio.get("tally")
    assert tally.add() == (1, _folders(loopback_nodes)[2])  # made again from its init args, on its node


def test_env_placed_by_compute_goes_where_the_resource_is(trio, loopback_nodes):
    roomy = rh.env(name="roomy", compute={"CPU": 1})
    tally = rh.module(ray_funcs.Tally).to(trio, env=roomy)(name="roomy_tally")
    assert tally.add()[1] in _folders(loopback_nodes)


@pytest.mark.parametrize(
    "placement, message",
    [({"compute": {"GPU": 1}}, "no node has"), ({"node": 7}, "names no node"), ({"node": "10.1.1.1"}, "names no node"),
     ({"node": 1, "compute": {"CPU": 4}}, "not compute")],
)
def test_a_placement_no_node_can_meet_fails_within_seconds(trio, placement, message):
    began = time.monotonic()
    with pytest.raises(BadRequestError, match=message):
        rh.env(name="impossible", **placement).to(trio)
    assert time.monotonic() - began < 10
    assert "impossible" not in [e["name"] for e in trio.status()["envs"]]


def test_user_code_joins_the_same_ray_cluster(trio):
    alive, answer = rh.function(ray_funcs.ray_nodes_seen_from_user_code).to(trio)()
    assert (alive, answer) == (3, 49)


def test_an_unauthenticated_ray_driver_is_refused(trio, loopback_nodes, tmp_path):
    script = f"import ray; ray.init(address='{trio.ray_address}'); print('CONNECTED')"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to find
    wrong = tmp_path / "wrong_token"
    wrong.write_text("not-the-token")
    # Both drivers at once (each is refused only after Ray's connection retries, about 20 s).
    drivers = [subprocess.Popen([sys.executable, "-c", script], env=extra, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for extra in (env, {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)})]
    for driver in drivers:
        out, _ = driver.communicate(timeout=90)
        assert "CONNECTED" not in out
        assert driver.returncode != 0


def _listening_ports(pids: set[int]) -> set[tuple[str, int]]:
    ports = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            ports.add((conn.laddr.ip, conn.laddr.port))
    return ports


def _answer_to_raw_http(host: str, port: int) -> bytes:
    target = "127.0.0.2" if host in ("0.0.0.0", "::", "") else host
    try:
        with socket.create_connection((target, port), timeout=2) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(2)
            return sock.recv(200)
    except OSError:
        return b""


def test_no_port_runhouse_opened_answers_without_credentials(trio, loopback_nodes):
    pids: set[int] = set()
    for home in loopback_nodes.homes:
        pids.update(p.pid for p in _group(_record(home)["pgid"]))
        pids.update(p.pid for p in _processes_under(home))
    pids.add(trio.status()["pid"])
    ports = _listening_ports(pids)
    assert any(port == RAY_PORT for _, port in ports)
    for host, port in sorted(ports):
        answer = _answer_to_raw_http(host, port)
        assert not answer.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2", b"HTTP/1.1 3")), (host, port, answer)
        if answer.startswith(b"HTTP/"):
            assert answer.split()[1] in (b"401", b"403"), (host, port, answer)


def test_a_node_that_dies_mid_map_has_its_items_run_on_the_others(trio, loopback_nodes):
    fn = rh.function(ray_funcs.slow_where).to(trio)
    fn.map([0, 1, 2], [0.1] * 3)  # the pool is up on every node
    lost = loopback_nodes.homes[2]
    killer = threading.Timer(1.5, _kill_node, args=(lost,))
    killer.start()
    began = time.monotonic()
    results = fn.map(range(12), [1.0] * 12)
    killer.join()
    print(f"map of 12 one-second items with a node killed after 1.5 s: {time.monotonic() - began:.1f} s")
    assert [x for x, _ in results] == list(range(12))
    assert {folder for _, folder in results} <= set(_folders(loopback_nodes))
    # The head and the other node keep working, and the lost node shows dead.
    after = fn.map(range(6), [0.0] * 6)
    assert {folder for _, folder in after} == set(_folders(loopback_nodes)[:2])
    _wait_for(lambda: not trio.status()["nodes"][2]["alive"], 60, "status shows the killed node dead")
    # up_if_not() brings it back, and maps use it again.
    fresh = rh.cluster(name="trio", ips=loopback_nodes.ips, ssh_creds=loopback_nodes.ssh_creds(),
                       server_port=trio.server_port, ray_port=RAY_PORT, node_resources=NODE_RESOURCES)
    fresh.up_if_not()
    assert trio.status()["nodes"][2]["alive"]
    _wait_for(lambda: {f for _, f in fn.map(range(12), [0.2] * 12)} == set(_folders(loopback_nodes)), 30,
              "maps spread over the node that came back")
    fresh.close()


def test_a_map_item_whose_worker_crashes_still_fails_without_retries(trio):
    from tests.integration import funcs

    fn = rh.function(funcs.kill_self).to(trio)
    with pytest.raises(MapError) as info:
        fn.map([1, 2])
    assert all(type(e).__name__ == "WorkerCrashedError" for e in info.value.errors.values())


def test_bring_up_fails_naming_the_node_whose_ssh_fails_and_starts_nothing(trio, loopback_nodes):
    before = _record(loopback_nodes.homes[0])
    port = free_port()
    broken = rh.cluster(name="broken", ips=[loopback_nodes.ips[0], "127.0.0.9"], ssh_creds=loopback_nodes.ssh_creds(),
                        server_port=port, ray_port=RAY_PORT + 1, node_resources=NODE_RESOURCES)
    with pytest.raises(HostGroupError, match="127.0.0.9"):
        broken.up_if_not()
    assert _record(loopback_nodes.homes[0]) == before  # the head's Ray is the module cluster's, untouched
    assert not broken.hosts.connections[f"127.0.0.2:{loopback_nodes.port}"].run(
        f"curl -s -m 2 http://127.0.0.1:{port}/health", timeout=30).stdout
    broken.close()


def test_teardown_stops_everything_it_started_on_every_node(trio, loopback_nodes):
    started = [proc for home in loopback_nodes.homes for proc in _node_processes(home)]
    daemon = psutil.Process(trio.status()["pid"])
    trio.teardown()
    _wait_for(lambda: not any(_alive(p) for p in [daemon, *started]), 15, "every process runhouse started is gone")
    assert all(_record(home) is None for home in loopback_nodes.homes)


def test_a_ray_runhouse_did_not_start_is_attached_to_and_left_running(loopback_nodes):
    head_home = loopback_nodes.homes[0]
    token = "attach-test-token-0123456789"
    (head_home / ".ray").mkdir(exist_ok=True)
    (head_home / ".ray" / "auth_token").write_text(token)
    venv = next((head_home / ".rh" / "venvs").glob("*/bin/ray"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(head_home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head_home / ".ray" / "auth_token"))
    temp = Path(tempfile.mkdtemp(prefix="rh-theirs-", dir="/tmp"))  # Ray's socket paths must stay short
    command = [str(venv), "start", "--head", f"--node-ip-address={loopback_nodes.ips[0]}", f"--port={RAY_PORT}",
               f"--temp-dir={temp}", "--num-cpus=1", "--memory=500000000", "--object-store-memory=100000000",
               "--include-dashboard=false", "--disable-usage-stats"]
    started = subprocess.run(command,
                   env=env, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert started.returncode == 0, started.stdout + started.stderr
    theirs = [p for p in psutil.process_iter(["name", "cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
    assert theirs
    try:
        pair = rh.cluster(name="pair", ips=loopback_nodes.ips[:2], ssh_creds=loopback_nodes.ssh_creds(),
                          server_port=free_port(), ray_port=RAY_PORT, node_resources=NODE_RESOURCES)
        pair.up_if_not()
        assert [n["alive"] for n in pair.status()["nodes"]] == [True, True]
        results = rh.function(ray_funcs.where).to(pair).map(range(8))
        assert {folder for _, folder in results} == set(_folders(loopback_nodes)[:2])
        pair.teardown()
        assert all(p.is_running() for p in theirs)  # their Ray keeps running
        assert _record(loopback_nodes.homes[1]) is None  # the node runhouse joined was stopped
    finally:
        for proc in theirs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        (head_home / ".ray" / "auth_token").unlink()
        shutil.rmtree(temp, ignore_errors=True)
