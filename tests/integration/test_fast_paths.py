"""The fast paths of issue 20: direct calls, and maps in batches with answers streamed in order.

Direct calls: a client on the daemon's machine calls the env's main worker straight. The daemon stays the
token gate and the control plane: these tests check that calls really go direct, that a connection without
the daemon's token gets nothing, and that runs, crashes, cancellation and moved or restarted objects behave as
they do through the daemon; that a worker gone between calls is routed around; that large results come
through the worker's reused shared memory without one caller's result ever changing under it. Maps: answers
come back in order while later items still run.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import runhouse as rh
from runhouse import protocol, serialization
from runhouse.errors import WorkerCrashedError
from runhouse.transport.direct import Route
from tests.integration import funcs

ROOT = Path(__file__).resolve().parents[2]


def _route(cluster: rh.Cluster, name: str) -> Route:
    route = cluster.direct_calls.routes.get(name)  # type: ignore[union-attr]
    assert isinstance(route, Route), f"calls of {name} did not go direct"
    return route


def _connect(route: Route) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect("\0" + route.address[1:])
    return sock


def _closed_without_answer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _wait_for_run(cluster: rh.Cluster, name: str, status: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        runs = cluster.runs(name=name, limit=5)
        if runs and runs[0]["status"] == status:
            return runs[0]
        assert time.monotonic() < deadline, f"no {status} run of {name}: {runs}"
        time.sleep(0.05)


def test_calls_go_straight_to_the_worker_and_are_recorded_as_runs(cluster):
    shout = rh.function(funcs.shout).to(cluster, name="direct_shout")
    assert shout("hi", times=2) == "hi"
    route = _route(cluster, "direct_shout")
    worker = next(w for w in cluster.status()["workers"] if w["role"] == "main" and w["env"] == "default")
    assert route.pid == worker["pid"]
    before = _calls_last_minute(cluster)
    for _ in range(20):
        shout("x")
    run = cluster.runs(name="direct_shout", limit=1)[0]  # read at once: the daemon collects direct runs first
    assert run["status"] == "done" and run["pid"] == route.pid
    assert "x line 0" in cluster.logs(run["id"])
    assert _calls_last_minute(cluster) >= before + 20


def _calls_last_minute(cluster: rh.Cluster) -> int:
    return next(e["calls_last_minute"] for e in cluster.status()["envs"] if e["name"] == "default")


def test_a_connection_without_the_daemons_token_is_closed_unanswered(cluster, tmp_path):
    tick = rh.function(funcs.tick).to(cluster, name="direct_tick")
    tick(str(tmp_path / "warm"), 0)
    route = _route(cluster, "direct_tick")
    marker = tmp_path / "ticks"
    meta = protocol.encode_meta({"name": "direct_tick", "method": "call"})
    call = protocol.worker_frame_head(protocol.REQUEST, 1, meta, 0)
    wrong = b"not-the-token"
    attempts = [
        protocol.WORKER_HEADER.pack(protocol.HELLO, 0, 0, len(wrong)) + wrong + call,  # wrong token
        call,  # no hello at all
        protocol.WORKER_HEADER.pack(protocol.HELLO, 0, 0, 2**40),  # a token longer than any
    ]
    for attempt in attempts:
        with _connect(route) as sock:
            sock.sendall(attempt)
            assert _closed_without_answer(sock)
    assert not marker.exists()
    assert tick(str(tmp_path / "after"), 0) == "finished"  # the worker still serves its clients


def test_a_worker_killed_mid_call_raises_worker_crashed_and_the_next_call_works(own_cluster):
    pid_of = rh.function(funcs.pid).to(own_cluster, name="direct_pid")
    kill_self = rh.function(funcs.kill_self).to(own_cluster, name="direct_kill_self")
    first = pid_of()
    with pytest.raises(WorkerCrashedError) as info:
        kill_self(signal.SIGKILL)
    assert info.value.signal == "SIGKILL" and "default" in str(info.value)
    run = _wait_for_run(own_cluster, "direct_kill_self", "crashed")
    assert "SIGKILL" in run["error"]
    assert pid_of() != first  # routed afresh to the restarted worker


def test_a_client_that_goes_away_mid_call_cancels_it(own_cluster, tmp_path):
    rh.function(funcs.tick).to(own_cluster, name="direct_ticker")
    marker = tmp_path / "ticks"
    script = (
        "import sys, runhouse as rh\n"
        f"c = rh.cluster(name='other', host='localhost', server_port={own_cluster.server_port})\n"
        "fn = c.get('direct_ticker')\n"
        f"fn({str(marker)!r}, 60)\n"
    )
    client = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert client.poll() is None and time.monotonic() < deadline, "the call never started"
            time.sleep(0.02)
        run = own_cluster.runs(name="direct_ticker", limit=1)[0]
        assert run["status"] == "running"
    finally:
        client.kill()
        client.wait()
    run = _wait_for_run(own_cluster, "direct_ticker", "cancelled")
    size = marker.stat().st_size
    time.sleep(0.3)
    assert marker.stat().st_size == size, "the call kept running after its client went away"


def test_an_object_moved_to_another_env_or_a_restarted_daemon_is_found_again(own_cluster):
    fn = rh.function(funcs.env_var).to(own_cluster, name="direct_env_var")
    assert fn("RH_ENV_NAME") == "default"
    old = _route(own_cluster, "direct_env_var")
    # Another client moves it: this one's route still names the old worker, which no longer has it.
    other = rh.cluster(name="other", host="localhost", server_port=own_cluster.server_port)
    moved_env = rh.env(name="direct_other_env", env_vars={"MOVED": "1"})
    rh.function(funcs.env_var).to(other, env=moved_env, name="direct_env_var")
    assert fn("RH_ENV_NAME") == "direct_other_env"  # the old worker answered "missing": through the daemon
    assert fn("RH_ENV_NAME") == "direct_other_env"  # routed afresh
    assert _route(own_cluster, "direct_env_var").pid != old.pid
    own_cluster.restart_server()
    assert fn("RH_ENV_NAME") == "direct_other_env"


def test_a_maps_answers_arrive_in_order_while_later_items_still_run(cluster):
    from runhouse.protocol import Op
    from runhouse.resources.remote import _pack

    sleep = rh.function(funcs.sleep_loop).to(cluster, name="map_sleep")
    sleep.map([0.0] * 8)  # the pool workers are up
    seconds = [0.0] * 4 + [2.0] * 4
    items = [_pack(cluster, ((s,), {}), []) for s in seconds]
    arrivals: list[tuple[float, int]] = []

    def on_items(payload: bytearray) -> None:
        view, offset, count = memoryview(payload), 0, 0
        while offset < view.nbytes:
            _, size = protocol.HTTP_FRAME.unpack_from(view, offset)
            offset += protocol.HTTP_FRAME.size + size
            count += 1
        arrivals.append((time.monotonic(), count))

    meta = {"name": "map_sleep", "method": "call", "sizes": [sum(len(p) for p in parts) for parts in items]}
    began = time.monotonic()
    response = cluster.request(protocol.control_path(Op.MAP), meta, [p for parts in items for p in parts],
                               on_items=on_items)
    ended = time.monotonic()
    assert response.kind == protocol.RESULT
    assert sum(count for _, count in arrivals) == len(seconds)
    assert ended - began >= 2.0
    assert arrivals[0][0] < ended - 1.0  # the quick items came back while the slow ones still ran


def test_a_large_map_keeps_order_and_each_items_failure(cluster):
    fail_on = rh.function(funcs.fail_on).to(cluster, name="map_fail_on")
    count = 5000
    with pytest.raises(rh.MapError) as info:
        fail_on.map(range(count), [1234] * count)
    results = info.value.results
    assert len(results) == count
    assert isinstance(results[1234], ValueError)
    assert [r for i, r in enumerate(results) if i != 1234] == [i * 10 for i in range(count) if i != 1234]


@pytest.mark.parametrize("direct", ["1", "0"])
def test_a_flushed_partial_line_is_streamed_at_once(cluster, monkeypatch, capsys, direct):
    """A progress bar shows while the call runs (in a notebook's cell as in a terminal), on either path."""
    monkeypatch.setenv("RH_DIRECT_CALLS", direct)
    bar = rh.function(funcs.progress_bar).to(cluster, name="progress_bar")
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(bar, 1.5)
        deadline = time.monotonic() + 1.4
        shown = ""
        while "10%" not in shown:
            assert time.monotonic() < deadline and not call.done(), f"the partial line was held back: {shown!r}"
            time.sleep(0.05)
            shown += capsys.readouterr().out
        assert call.result() == "finished"
    shown += capsys.readouterr().out
    assert shown == "\r(progress_bar)  10%\r(progress_bar) 100%\n"


def test_a_forked_child_calls_on_connections_of_its_own(cluster):
    """A fork (multiprocessing, a data loader's workers) must not share the parent's worker connections."""
    add = rh.function(funcs.add).to(cluster, name="fork_add")
    assert add(1, 2) == 3  # the parent's connection is open
    pid = os.fork()
    if pid == 0:  # the child: calls at the same time as the parent
        ok = all(add(i, 1) == i + 1 for i in range(300))
        os._exit(0 if ok else 1)
    results = [add(i, 2) for i in range(300)]
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        assert time.monotonic() < deadline, "the child's calls hung"
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert results == [i + 2 for i in range(300)]


def _pool_files(pid: int) -> set[str]:
    return {name for name in os.listdir(serialization.SHM_DIR)
            if name.startswith(f"{serialization.SHM_PREFIX}{pid}{serialization.POOL_MARK}")}


def test_large_direct_replies_reuse_shared_memory_yet_each_held_result_keeps_its_value(own_cluster):
    filled = rh.function(funcs.filled).to(own_cluster, name="direct_filled")
    size = 2 * serialization.SHM_THRESHOLD
    held = [filled(size, value) for value in range(1, serialization.SHM_POOL_FILES + 3)]  # more than the pool
    pid = _route(own_cluster, "direct_filled").pid
    files = _pool_files(pid)
    assert len(files) == serialization.SHM_POOL_FILES  # all held: the rest got files of their own
    held[0][:] = 99  # a result is the caller's own: writing it changes nothing the worker reuses
    for value, array in enumerate(held[1:], 2):
        assert array.nbytes == size and (array == value).all()
    del held, array
    gc.collect()
    for value in range(100, 110):  # nothing held now: the same files serve every reply
        assert (filled(size, value) == value).all()
    assert _pool_files(pid) == files
    kept = filled(size, 7)
    assert all((filled(size, v) == v).all() for v in range(8, 20)) and (kept == 7).all()
    os.kill(pid, signal.SIGKILL)  # a worker that dies leaves no pool behind (the daemon removes its files)
    deadline = time.monotonic() + 15
    while _pool_files(pid):
        assert time.monotonic() < deadline, f"the dead worker's pool files stayed: {_pool_files(pid)}"
        time.sleep(0.05)
    assert (kept == 7).all()  # a result still held outlives its file


@pytest.fixture
def quick_pool_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RH_SHM_POOL_IDLE_S", "1")  # read by the workers of the daemon started after this


def test_a_workers_pool_files_go_once_idle(quick_pool_trim, own_cluster):
    filled = rh.function(funcs.filled).to(own_cluster, name="direct_filled")
    assert (filled(2 * serialization.SHM_THRESHOLD, 5) == 5).all()
    pid = _route(own_cluster, "direct_filled").pid
    assert _pool_files(pid)
    deadline = time.monotonic() + 15
    while _pool_files(pid):
        assert time.monotonic() < deadline, "the pool's idle files stayed"
        time.sleep(0.05)
    assert (filled(2 * serialization.SHM_THRESHOLD, 6) == 6).all()  # and come back with the next reply


def test_waiting_for_a_reply_burns_no_cpu_beyond_a_brief_poll(cluster):
    slow = rh.function(funcs.slow_pid).to(cluster, name="direct_slow_pid")
    slow(0)
    _route(cluster, "direct_slow_pid")
    before = time.process_time()
    slow(0.5)  # alone: polls its reply for RH_DIRECT_SPIN_US (60 µs), then sleeps until it comes
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: slow(0.5), range(4)))
    assert time.process_time() - before < 0.25, "waiting for replies burnt CPU"


def test_a_worker_that_died_between_calls_is_routed_around_without_an_error(own_cluster):
    pid_of = rh.function(funcs.pid).to(own_cluster, name="direct_pid")
    first = pid_of()
    _route(own_cluster, "direct_pid")  # the kept-alive connection now leads to a worker about to die
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while any(w["pid"] == first and w["alive"] for w in own_cluster.status()["workers"]):  # the daemon saw it go
        assert time.monotonic() < deadline, "the daemon still lists the killed worker"
        time.sleep(0.05)
    second = pid_of()  # the send failed, nothing ran: the call went through the daemon
    assert second != first
    assert pid_of() == second and _route(own_cluster, "direct_pid").pid == second  # then direct to the new one


def test_many_callers_of_large_results_each_get_their_own_values(cluster):
    filled = rh.function(funcs.filled).to(cluster, name="direct_filled_many")
    size = 2 * serialization.SHM_THRESHOLD

    def caller(base: int) -> bool:
        kept = []
        for step in range(12):
            value = (base * 16 + step) % 251
            kept = [*kept[-2:], (value, filled(size, value))]  # a few held while more arrive
            if not all(array[0] == v and array[-1] == v and (array == v).all() for v, array in kept):
                return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(caller, range(8)))
    assert len(_pool_files(_route(cluster, "direct_filled_many").pid)) <= serialization.SHM_POOL_FILES
