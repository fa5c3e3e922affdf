"""Crashes, hangs, cancellation, load, and restarts: the daemon stays up and callers keep working."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

import runhouse as rh
from runhouse.daemon_files import DaemonFiles
from runhouse.errors import CallTimeoutError, WorkerCrashedError
from runhouse.resources.clusters import local_daemon as daemon
from tests.integration import funcs

CRASH_ENV = "crash_env"


def _main_pid(cluster, env="default"):
    return next(w["pid"] for w in cluster.status()["workers"] if w["env"] == env and w["role"] == "main")


def _family(pid):
    return {p.pid for p in psutil.Process(pid).children(recursive=True)}


@pytest.mark.parametrize(
    "crash, expected",
    [
        (lambda c: rh.function(funcs.crash).to(c, env=CRASH_ENV)(3), {"exit_code": 3, "signal": None}),
        (lambda c: rh.function(funcs.kill_self).to(c, env=CRASH_ENV)(signal.SIGKILL), {"signal": "SIGKILL"}),
        (lambda c: rh.function(funcs.segfault).to(c, env=CRASH_ENV)(), {"signal": "SIGSEGV"}),
    ],
    ids=["os._exit", "sigkill", "segfault"],
)
def test_dead_worker_raises_worker_crashed_and_everything_in_it_comes_back(own_cluster, crash, expected):
    env = rh.env(name=CRASH_ENV, env_vars={"CRASH": "1"}).to(own_cluster)
    add = rh.function(funcs.add).to(own_cluster, env=env)
    counter = rh.module(funcs.Counter).to(own_cluster, env=env)(start=7, name="survivor")
    began = time.monotonic()
    with pytest.raises(WorkerCrashedError) as info:
        crash(own_cluster)
    assert time.monotonic() - began < 2
    for key, value in expected.items():
        assert getattr(info.value, key) == value
    assert (str(expected.get("exit_code")) if "exit_code" in expected else expected["signal"]) in str(info.value)
    assert add(1, 2) == 3  # another function that lived in the dead worker
    assert counter.value == 7  # re-created from its init args
    assert own_cluster.is_up()


def test_worker_over_its_memory_limit_is_killed_and_restarted(own_cluster):
    env = rh.env(name="small_env", memory_limit_mb=150)
    hog = rh.function(funcs.hog_memory).to(own_cluster, env=env)
    with pytest.raises(WorkerCrashedError, match="memory limit of 150 MiB") as info:
        hog(400)
    assert info.value.signal == "SIGKILL"
    assert rh.function(funcs.add).to(own_cluster, env=env)(2, 2) == 4


def test_fifty_crashes_leave_the_daemon_healthy_without_leaks(own_cluster):
    env = rh.env(name=CRASH_ENV, env_vars={"CRASH": "1"})
    crash = rh.function(funcs.crash).to(own_cluster, env=env)
    add = rh.function(funcs.add).to(own_cluster, env=env)
    pid = daemon.running_pid(own_cluster.server_port)
    add(0, 0)
    fds_before, children_before = psutil.Process(pid).num_fds(), len(_family(pid))
    for i in range(50):
        with pytest.raises(WorkerCrashedError):
            crash(1)
        assert add(i, 1) == i + 1
    assert own_cluster.is_up()
    deadline = time.monotonic() + 3  # connections of the last requests close asynchronously
    while psutil.Process(pid).num_fds() > fds_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert psutil.Process(pid).num_fds() <= fds_before
    assert len(_family(pid)) == children_before


def test_timeout_raises_and_cancels_the_call(own_cluster, tmp_path):
    tick = rh.function(funcs.tick).to(own_cluster)
    path = tmp_path / "ticks"
    began = time.monotonic()
    with pytest.raises(CallTimeoutError):
        tick(str(path), 30, timeout=1)
    assert time.monotonic() - began < 2
    time.sleep(0.5)
    size = path.stat().st_size
    time.sleep(0.5)
    assert path.stat().st_size == size, "the call kept running after its timeout"
    assert tick(str(tmp_path / "other"), 0.1) == "finished"


def test_call_stuck_in_native_code_is_stopped_by_restarting_its_worker(own_cluster):
    slow = rh.function(funcs.slow_pid).to(own_cluster)
    pid = _main_pid(own_cluster)
    with pytest.raises(CallTimeoutError):
        slow(60, timeout=0.5)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the stuck worker was never stopped"
        time.sleep(0.1)
    assert slow(0) != pid


def test_ctrl_c_in_the_caller_cancels_the_remote_call(own_cluster, tmp_path):
    rh.function(funcs.tick).to(own_cluster)
    path = tmp_path / "ticks"
    script = textwrap.dedent(f"""
        import runhouse as rh
        box = rh.cluster(host="localhost", server_port={own_cluster.server_port})
        print("calling", flush=True)
        box.get("tick")({str(path)!r}, 60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert b"KeyboardInterrupt" in err
    time.sleep(0.5)
    size = path.stat().st_size
    time.sleep(0.5)
    assert path.stat().st_size == size, "the remote call kept running after Ctrl-C"


def test_two_hundred_concurrent_callers_for_ten_seconds(own_cluster):
    add = rh.function(funcs.add).to(own_cluster)
    pid = daemon.running_pid(own_cluster.server_port)
    errors: list[BaseException] = []
    counts = [0] * 200
    stop = time.monotonic() + 10

    def caller(i):
        try:
            while time.monotonic() < stop:
                assert add(i, 1, stream_logs=False) == i + 1
                counts[i] += 1
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    def run(seconds):
        nonlocal stop
        stop = time.monotonic() + seconds
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + 30)
        assert not any(t.is_alive() for t in threads), "deadlock: callers still waiting"

    run(2)  # warm-up: connections, buffers
    memory_before = psutil.Process(pid).memory_info().rss + psutil.Process(_main_pid(own_cluster)).memory_info().rss
    counts[:] = [0] * 200
    run(10)
    memory_after = psutil.Process(pid).memory_info().rss + psutil.Process(_main_pid(own_cluster)).memory_info().rss
    assert errors == []
    assert min(counts) > 0, "some callers starved"
    assert memory_after - memory_before < 30 * 2**20, f"memory grew by {(memory_after - memory_before) / 2**20:.0f} MiB"


def test_restart_brings_back_envs_functions_and_instances(own_cluster):
    env = rh.env(name="kept_env", env_vars={"KEPT": "yes"})
    env_var = rh.function(funcs.env_var).to(own_cluster, env=env)
    counter = rh.module(funcs.Counter).to(own_cluster, env=env)(start=3, name="kept_counter")
    counter.increment()
    own_cluster.restart_server()
    assert env_var("KEPT") == "yes"
    assert counter.value == 3  # re-created from its init args; in-memory state is lost
    assert own_cluster.get("kept_counter").increment() == 4


def test_an_instance_with_large_init_arguments_comes_back_after_a_restart(own_cluster):
    counter = rh.module(funcs.Counter).to(own_cluster)(start=b"x" * 2**21, name="big_start")
    own_cluster.restart_server()
    assert counter.value == b"x" * 2**21


def test_a_saved_env_an_older_daemon_let_through_is_dropped_not_fatal(own_cluster):
    port = own_cluster.server_port
    rh.env(name="good_env", env_vars={"GOOD": "1"}).to(own_cluster)  # the registry is saved
    registry = Path(DaemonFiles.local(port).registry)
    own_cluster.teardown()
    data = json.loads(registry.read_text())
    data["envs"].append({"name": "bad_env", "reqs": [], "env_vars": {"A\u0000B": "1"}, "memory_limit_mb": None})
    registry.write_text(json.dumps(data))
    own_cluster.up_if_not()
    assert own_cluster.run_python(["print(1)"], stream_logs=False)[0][0] == 0
    envs = [env["name"] for env in own_cluster.status()["envs"]]
    assert "good_env" in envs and "bad_env" not in envs


def test_killed_daemon_started_again_serves_the_same_objects(own_cluster):
    add = rh.function(funcs.add).to(own_cluster)
    port = own_cluster.server_port
    old_pid = daemon.running_pid(port)
    workers = _family(old_pid)
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers):
        assert time.monotonic() < deadline, "workers outlived their daemon"
        time.sleep(0.05)
    daemon.start(port)
    assert add(2, 3) == 5


def test_client_reconnects_transparently_when_the_daemon_restarts(own_cluster):
    add = rh.function(funcs.add).to(own_cluster)
    assert add(1, 1) == 2
    restart = [sys.executable, "-m", "runhouse.cli", "restart", "--port", str(own_cluster.server_port)]
    subprocess.run(restart, check=True)
    assert add(2, 2) == 4  # same stub, same (now stale) keep-alive connection
