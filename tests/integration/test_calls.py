"""Every call type against a real daemon."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import runhouse as rh
from runhouse.errors import MapError, RemoteError, SerializationError
from tests.integration import funcs


@pytest.fixture(scope="module")
def add(cluster):
    return rh.function(funcs.add).to(cluster)


def test_call_returns_result(add):
    assert add(1, 2) == 3
    assert add(a="x", b="y") == "xy"


def test_redeploy_of_unchanged_code_keeps_the_worker_state(cluster):
    first = rh.function(funcs.record).to(cluster)
    first("a", 0)
    again = rh.function(funcs.record).to(cluster)
    assert ("start", "a") in again("b", 0), "redeploying unchanged code must not reload the module"


def test_changed_code_is_reloaded_on_redeploy(cluster, tmp_path, monkeypatch):
    (tmp_path / "changing_mod.py").write_text("def value():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import changing_mod

    assert rh.function(changing_mod.value).to(cluster)() == 1
    (tmp_path / "changing_mod.py").write_text("def value():\n    return 2\n")
    assert rh.function(changing_mod.value).to(cluster)() == 2


def test_code_defined_locally_is_sent_by_value(cluster):
    offset = 100

    def local_add(x):
        return x + offset

    assert rh.function(local_add).to(cluster)(1) == 101


def test_remote_keeps_result_on_cluster_and_get_fetches_it(add):
    ref = add.remote(20, 22)
    assert isinstance(ref, rh.Ref)
    assert rh.get(ref) == 42


def test_ref_argument_is_resolved_on_the_cluster(cluster):
    # A lock cannot be pickled, so it can only reach `describe` without crossing the network.
    lock_ref = rh.function(funcs.make_lock).to(cluster).remote()
    assert rh.function(funcs.describe).to(cluster)(lock_ref) == "lock"
    with pytest.raises(SerializationError):
        rh.get(lock_ref)


def test_ref_is_resolved_in_another_env_and_in_map(cluster):
    ref = rh.function(funcs.add).to(cluster).remote([1], [2, 3])
    other = rh.function(funcs.length).to(cluster, env=rh.env(env_vars={"X": "1"}, name="other_env"))
    assert other(ref) == 3
    assert other.map([ref, ref]) == [3, 3]


def test_map_zips_positional_iterables_like_builtin_map(add):
    assert add.map([1, 2, 3], [10, 20, 30, 40]) == [11, 22, 33]
    assert add.map([], []) == []


def test_map_zips_list_keywords_and_passes_other_keywords_unchanged(add):
    assert add.map([1, 2], b=[10, 20]) == [11, 22]
    assert add.map([1, 2], b=5) == [6, 7]
    assert add.map(a=["x", "y"], b="!") == ["x!", "y!"]


def test_starmap(add):
    assert add.starmap([(1, 2), (3, 4)]) == [3, 7]


def test_map_runs_in_parallel_over_several_processes(cluster):
    slow = rh.function(funcs.slow_pid).to(cluster)
    slow.map([0.01] * 4)  # warm the pool
    began = time.monotonic()
    pids = slow.map([0.5] * 4)
    elapsed = time.monotonic() - began
    assert len(set(pids)) >= 2
    assert elapsed < 1.5, f"4 x 0.5 s on a pool of >= 2 processes took {elapsed:.2f} s"


def test_map_failure_carries_every_item_outcome(cluster):
    fn = rh.function(funcs.fail_on).to(cluster)
    with pytest.raises(MapError) as info:
        fn.map([1, 2, 3], bad=2)
    results = info.value.results
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError) and "item 2 is bad" in str(results[1])
    assert list(info.value.errors) == [1]


def test_enqueue_runs_calls_one_at_a_time_in_arrival_order(cluster):
    fn = rh.function(funcs.record).to(cluster)
    results = {}

    def go(tag):
        results[tag] = fn.enqueue(tag, 0.2)

    threads = []
    for tag in ["q1", "q2", "q3"]:
        threads.append(threading.Thread(target=go, args=(tag,)))
        threads[-1].start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    log = [event for event in max(results.values(), key=len) if event[1].startswith("q")]
    assert log == [("start", "q1"), ("end", "q1"), ("start", "q2"), ("end", "q2"), ("start", "q3"), ("end", "q3")]


def test_stream_logs_prints_and_logging_live_with_prefix(cluster, capfd):
    fn = rh.function(funcs.shout).to(cluster)
    assert fn("hello", times=2, stream_logs=True) == "hello"
    out = capfd.readouterr().out
    assert "(shout) hello line 0\n" in out
    assert "(shout) hello line 1\n" in out
    assert "(shout) hello logged\n" in out


def test_stream_logs_off_prints_nothing_here(cluster, capfd):
    rh.function(funcs.shout).to(cluster)("quiet", stream_logs=False)
    assert "quiet" not in capfd.readouterr().out


def test_logs_of_concurrent_calls_never_mix(cluster):
    rh.function(funcs.shout).to(cluster)
    streams: dict[str, list[bytes]] = {}

    def go(tag):
        chunks = streams.setdefault(tag, [])
        cluster.request("/shout/call", {"stream_logs": True}, _args((tag,), {"times": 200}), chunks.append).value()

    threads = [threading.Thread(target=go, args=(f"tag{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tag, chunks in streams.items():
        lines = b"".join(chunks).decode().splitlines()
        assert len(lines) == 201
        assert all(line.startswith(tag) for line in lines), f"another call's output in {tag}'s stream"


def test_streamed_calls_leave_no_files_behind(cluster, config_dir):
    fn = rh.function(funcs.shout).to(cluster)
    fn("warm", stream_logs=True)
    before = sorted(p for p in config_dir.rglob("*"))
    for i in range(30):
        fn(f"call{i}", stream_logs=True)
    assert sorted(p for p in config_dir.rglob("*")) == before


def test_async_function_is_awaitable_locally(cluster):
    fn = rh.function(funcs.async_double).to(cluster)
    assert asyncio.run(fn(21)) == 42


def test_remote_exception_keeps_its_type_and_remote_traceback(cluster):
    with pytest.raises(ValueError, match="remote says no") as info:
        rh.function(funcs.raise_value_error).to(cluster)()
    assert "raise_value_error" in str(info.value.__cause__)
    assert "funcs.py" in str(info.value.__cause__)


def test_exception_that_cannot_be_rebuilt_becomes_remote_error(cluster):
    with pytest.raises(RemoteError) as info:
        rh.function(funcs.raise_two_arg_error).to(cluster)()
    assert info.value.type_name == "TwoArgError"
    assert "x/y" in info.value.message
    assert "raise_two_arg_error" in info.value.traceback


def test_unpicklable_argument_is_a_clear_client_side_error(add):
    with pytest.raises(SerializationError, match="cannot serialize"):
        add(threading.Lock(), 1)


def _args(args, kwargs):
    from runhouse import serialization

    return serialization.serialize((args, kwargs))


def _shm_files():
    import os

    from runhouse.serialization import POOL_MARK, SHM_DIR, SHM_PREFIX

    # A worker's pool files are kept for reuse (bounded; test_fast_paths.py checks they go when idle).
    return {n for n in os.listdir(SHM_DIR) if n.startswith(SHM_PREFIX) and POOL_MARK not in n}


def test_large_arrays_go_through_shared_memory_both_ways_and_leave_nothing(cluster):
    import numpy as np

    before = _shm_files()
    big = np.ones(8 * 2**20, dtype=np.uint8)
    assert rh.function(funcs.checksum).to(cluster)(big) == (8 * 2**20, True)
    back = rh.function(funcs.ones).to(cluster)(8 * 2**20)
    assert back.nbytes == 8 * 2**20 and back.sum() == 8 * 2**20
    back[0] = 7  # writable, copy-on-write
    cluster.put("big_value", big)
    assert cluster.get("big_value").sum() == 8 * 2**20
    assert _shm_files() == before


def test_unclaimed_shared_memory_is_swept():
    import os
    import time

    import numpy as np

    from runhouse import serialization

    before = _shm_files()
    parts = serialization.serialize(np.zeros(4 * 2**20, dtype=np.uint8), shm=True)
    [name] = _shm_files() - before
    old = time.time() - serialization.SHM_MAX_AGE_S - 10
    os.utime(os.path.join(serialization.SHM_DIR, name), (old, old))
    assert serialization.sweep_shm() >= 1
    assert name not in _shm_files()
    with pytest.raises(SerializationError, match="gone"):
        serialization.deserialize(serialization.join(parts))


def test_a_refused_request_leaves_no_shared_memory_behind(cluster):
    from runhouse.errors import ObjectNotFoundError
    from runhouse.resources.remote import call
    from runhouse.serialization import SHM_DIR, SHM_PREFIX

    def ours() -> set[str]:
        return {name for name in os.listdir(SHM_DIR) if name.startswith(f"{SHM_PREFIX}{os.getpid()}-")}

    assert cluster.shares_memory
    before = ours()
    big = b"x" * (4 * 2**20)
    with pytest.raises(ObjectNotFoundError):
        call(cluster, "no_such_function", "call", [big], {})
    with pytest.raises(ObjectNotFoundError):
        cluster.put("k", big, env="no_such_env")
    assert ours() == before
