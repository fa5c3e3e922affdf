"""Issue 13, the daemon's workers: import races, dying workers, their shared memory, env specs."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import runhouse as rh
from runhouse import protocol, serialization
from runhouse.errors import BadRequestError, WorkerCrashedError
from tests.integration import funcs, worker_funcs


def _main_worker(cluster, env="default"):
    """Status of the env's live main worker, or None."""
    return next(
        (w for w in cluster.status()["workers"] if w["env"] == env and w["role"] == "main" and w["alive"]), None
    )


def _kill_main_worker(cluster, env="default"):
    """SIGKILL the env's main worker and wait until the daemon saw it die."""
    pid = _main_worker(cluster, env)["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (worker := _main_worker(cluster, env)) is not None and worker["pid"] == pid:
        assert time.monotonic() < deadline, f"the daemon did not notice worker {pid} die"
        time.sleep(0.02)


# --- item 9: imports on many threads at once -------------------------------------------------------------
IMPORT_ROUNDS = 16
CALLS_PER_ROUND = 16


def test_concurrent_first_calls_that_import_numpy_never_fail(own_cluster):
    """Half the calls import numpy by unpickling an array argument, half by running ``import numpy``, all at
    once in a fresh worker: CPython's per-module import locks used to deadlock (``_DeadlockError``, or a
    partially initialized numpy) in 6-25% of such calls."""
    import numpy as np

    by_argument = rh.function(worker_funcs.numpy_sum).to(own_cluster)
    by_import = rh.function(worker_funcs.numpy_ones_sum).to(own_cluster)
    array = np.ones(100)
    failures: list[str] = []
    for _ in range(IMPORT_ROUNDS):
        _kill_main_worker(own_cluster)  # the next calls start a fresh worker, numpy not imported yet
        with ThreadPoolExecutor(CALLS_PER_ROUND) as pool:
            # interleaved: a thread importing numpy while others unpickle arrays is what deadlocked
            kinds = [(by_import, 100) if i % 2 else (by_argument, array) for i in range(CALLS_PER_ROUND)]
            calls = [pool.submit(fn, arg) for fn, arg in kinds]
        for call in calls:
            if call.exception() is not None:
                failures.append(f"{type(call.exception()).__name__}: {call.exception()}")
            else:
                assert call.result() == 100
    assert failures == [], f"{len(failures)} of {IMPORT_ROUNDS * CALLS_PER_ROUND} calls failed: {failures[:3]}"


# --- item 10: every way a request can meet a dead worker ---------------------------------------------------
def test_a_call_to_a_worker_whose_channel_closed_raises_worker_crashed_and_the_worker_comes_back(
    own_cluster, tmp_path, monkeypatch
):
    """The daemon sees the channel close before it sees the process exit; a call arriving in between used to
    get an untyped 500 (``RuntimeError: ... UnixTransport closed``). Calls go through the daemon here: a call
    sent straight to the worker leaves its channel reader free, which then sees the close and exits at once."""
    monkeypatch.setenv("RH_DIRECT_CALLS", "0")
    env = rh.env(name="one_thread_env", env_vars={"RH_WORKER_THREADS": "1"})
    linger = rh.function(worker_funcs.close_channel_and_linger).to(own_cluster, env=env)
    add = rh.function(worker_funcs.add).to(own_cluster, env=env)
    marker = tmp_path / "closed"
    with ThreadPoolExecutor(1) as pool:
        lingering = pool.submit(linger, str(marker), 30)
        deadline = time.monotonic() + 10
        while not marker.exists():
            assert time.monotonic() < deadline, "the channel was never closed"
            time.sleep(0.01)
        time.sleep(0.2)  # the daemon has seen the channel close by now
        began = time.monotonic()
        with pytest.raises(WorkerCrashedError, match="one_thread_env"):
            add(1, 2)
        with pytest.raises(WorkerCrashedError, match="channel"):
            lingering.result(timeout=60)
    assert time.monotonic() - began < 5, "the daemon waited for the lingering worker instead of killing it"
    assert add(1, 2) == 3


SOAK_SECONDS = 8
SOAK_CALLERS = 8


def test_callers_of_a_worker_that_keeps_crashing_only_ever_see_worker_crashed(own_cluster):
    """Calls racing a crash used to meet the closed channel before the daemon reaped the worker (180 untyped
    500s in 30 s of this load)."""
    env = rh.env(name="crashing_env", env_vars={"CRASH": "1"})
    crash = rh.function(funcs.crash).to(own_cluster, env=env)
    add = rh.function(worker_funcs.add).to(own_cluster, env=env)
    stop = time.monotonic() + SOAK_SECONDS
    outcomes: list[str] = []

    def call_until_stop(fn, *args):
        while time.monotonic() < stop:
            try:
                fn(*args)
                outcomes.append("ok")
            except WorkerCrashedError:
                outcomes.append("crashed")
            except Exception as exc:  # noqa: BLE001 - every other outcome is the failure this test looks for
                outcomes.append(f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(SOAK_CALLERS + 1) as pool:
        pool.submit(call_until_stop, crash, 1)
        for _ in range(SOAK_CALLERS):
            pool.submit(call_until_stop, add, 1, 2)
    unexpected = [o for o in outcomes if o not in ("ok", "crashed")]
    assert unexpected == [], f"{len(unexpected)} of {len(outcomes)} calls: {unexpected[:3]}"
    assert outcomes.count("crashed") > SOAK_SECONDS and outcomes.count("ok") > 0


@pytest.mark.parametrize("how", ["program", "fork"])
def test_a_worker_that_dies_leaving_processes_it_started_is_seen_dead_at_once(own_cluster, how):
    """Neither a program the worker runs nor a fork of it keeps the worker's channel open after it died."""
    exit_leaving_processes = rh.function(worker_funcs.start_process_then_exit).to(own_cluster)
    began = time.monotonic()
    with pytest.raises(WorkerCrashedError) as info:
        exit_leaving_processes(how, 3)
    assert info.value.exit_code == 3
    assert time.monotonic() - began < 5, "the crash was noticed only when the processes it started exited"
    assert rh.function(worker_funcs.add).to(own_cluster)(1, 2) == 3



# --- item 11: shared memory of a dead worker -----------------------------------------------------------------
SHM_REPLY_BYTES = 128 * 2**20  # writing this much to shared memory takes long enough to kill the writer midway


def _shm_buffers() -> set[str]:
    return {n for n in os.listdir(serialization.SHM_DIR) if n.startswith(serialization.SHM_PREFIX)}


def test_a_worker_killed_while_writing_its_reply_to_shared_memory_leaves_none_of_it(own_cluster):
    """Its buffers used to stay until the daemon's sweep, 10 minutes later."""
    env = rh.env(name="shm_env", env_vars={"SHM": "1"})
    ones = rh.function(worker_funcs.ones).to(own_cluster, env=env)
    assert ones(10).sum() == 10  # the worker is up
    pid = _main_worker(own_cluster, "shm_env")["pid"]
    before = _shm_buffers()
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(ones, SHM_REPLY_BYTES)
        deadline = time.monotonic() + 30
        while not (written := _shm_buffers() - before):
            assert time.monotonic() < deadline and not call.done(), "the reply never went to shared memory"
        os.kill(pid, signal.SIGKILL)  # while it writes the reply's buffer
        with pytest.raises(WorkerCrashedError):
            call.result(timeout=30)
    deadline = time.monotonic() + 5
    while written & _shm_buffers():
        assert time.monotonic() < deadline, f"buffers of the dead worker are still there: {written & _shm_buffers()}"
        time.sleep(0.05)


def test_buffers_in_flight_to_or_from_others_stay_when_a_worker_dies(own_cluster):
    """The client's own buffers, and a reply's buffers the dead worker handed over before dying, are read later."""
    import numpy as np

    ones = rh.function(worker_funcs.ones).to(own_cluster)
    meta = {"shm": True, "stream_logs": False}
    args = serialization.serialize(((8 * 2**20,), {}))
    handed_over = own_cluster.request(protocol.call_path("ones", protocol.CALL_METHOD), meta, args)
    assert handed_over.kind == protocol.RESULT
    parts = serialization.serialize(np.ones(8 * 2**20, dtype=np.uint8), shm=True)
    before = _shm_buffers()
    _kill_main_worker(own_cluster)
    assert ones(10).sum() == 10  # the worker is back
    assert _shm_buffers() >= before
    assert serialization.deserialize(handed_over.payload).sum() == 8 * 2**20
    assert serialization.deserialize(serialization.join(parts)).sum() == 8 * 2**20


class _Interrupted(Exception):
    pass


def test_serializing_interrupted_midway_removes_the_buffers_it_already_wrote():
    """A call cancelled (an exception raised in its thread) while its reply goes to shared memory."""
    import ctypes
    import threading

    import numpy as np

    value = [np.full(16 * 2**20, i, dtype=np.uint8) for i in range(16)]
    owner = f"interrupted-{os.getpid()}"
    outcome: list[BaseException] = []

    def write() -> None:
        try:
            serialization.serialize(value, shm=True, shm_owner=owner)
        except _Interrupted as exc:
            outcome.append(exc)

    def mine() -> set[str]:
        return {n for n in _shm_buffers() if n.startswith(f"{serialization.SHM_PREFIX}{owner}-")}

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 10
    while not mine():
        assert time.monotonic() < deadline and writer.is_alive(), "nothing was written to shared memory"
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(writer.ident), ctypes.py_object(_Interrupted))
    writer.join()
    assert outcome, "the interruption came too late"
    assert mine() == set()



# --- items 12 and 13: env specs the daemon accepts ----------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        {"env_vars": {"MO\x00DE": "prod"}},
        {"env_vars": {"MODE": "pr\x00od"}},
        {"env_vars": {"MODE=x": "prod"}},
        {"env_vars": {"MODE": 1}},
        {"reqs": "numpy"},
        {"reqs": ["numpy", 1]},
        {"memory_limit_mb": -1},
    ],
    ids=["nul-in-name", "nul-in-value", "equals-in-name", "int-value", "reqs-string", "reqs-int", "negative-limit"],
)
def test_an_invalid_env_spec_is_refused_with_400_and_nothing_is_kept(cluster, fields):
    spec = {"name": "refused_env", **fields}
    with pytest.raises(BadRequestError) as info:
        cluster.request(protocol.control_path(protocol.Op.ENV), {"env": spec}).value()
    assert info.value.status == 400
    assert "refused_env" not in [env["name"] for env in cluster.status()["envs"]]
    assert rh.function(worker_funcs.add).to(cluster)(1, 2) == 3
