"""Issue 13, the daemon's workers: import races, dying workers, their shared memory, env specs."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import runhouse as rh
from tests.integration import worker_funcs


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

