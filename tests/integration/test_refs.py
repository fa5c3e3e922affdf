""".remote(): a ref as soon as the cluster accepted the call; rh.get waits for it; refs outlive their process."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import pytest

import runhouse as rh
from runhouse.errors import CallTimeoutError, ObjectNotFoundError, WorkerCrashedError
from tests.integration import funcs


@pytest.fixture(scope="module")
def sleeper(cluster):
    return rh.function(funcs.sleep_loop).to(cluster)


def test_remote_returns_before_the_call_finishes_and_get_waits_for_it(sleeper):
    began = time.monotonic()
    ref = sleeper.remote(1.5)
    assert time.monotonic() - began < 1.0
    assert ref.done() is False
    assert rh.get(ref) == "finished"
    assert time.monotonic() - began >= 1.5
    assert ref.done() is True


def test_get_with_a_timeout_raises_while_the_call_runs_on(sleeper):
    ref = sleeper.remote(1.0)
    began = time.monotonic()
    with pytest.raises(CallTimeoutError, match="keeps running"):
        rh.get(ref, timeout=0.2)
    assert time.monotonic() - began < 1.0
    assert rh.get(ref, timeout=30) == "finished"


def test_the_cluster_gets_a_ref_by_its_key_waiting_like_rh_get(sleeper, cluster):
    ref = sleeper.remote(1.0)
    with pytest.raises(CallTimeoutError):
        cluster.get(ref.key, timeout=0.2)
    assert cluster.get(ref.key) == "finished"


def test_errors_of_the_call_surface_at_get(cluster):
    ref = rh.function(funcs.raise_value_error).to(cluster).remote()
    assert isinstance(ref, rh.Ref)
    with pytest.raises(ValueError):
        rh.get(ref)
    assert ref.done() is True


def test_a_ref_passed_on_before_its_call_finished_is_waited_for(cluster):
    ref = rh.function(funcs.slow_pid).to(cluster).remote(0.5)
    assert rh.function(funcs.add).to(cluster)(ref, 0) == rh.get(ref)


def test_a_ref_whose_call_failed_fails_the_call_it_is_passed_to(cluster):
    ref = rh.function(funcs.raise_value_error).to(cluster).remote()
    with pytest.raises(ValueError):
        rh.function(funcs.add).to(cluster)(ref, 1)


def test_another_process_gets_a_ref_by_its_pickle(cluster):
    ref = rh.function(funcs.add).to(cluster).remote(40, 2)
    code = "import pickle, sys, runhouse as rh; print(rh.get(pickle.loads(sys.stdin.buffer.read())))"
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(ref), capture_output=True, timeout=60, env=os.environ.copy()
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "42"
    assert cluster.get(ref.key) == 42


def test_deleting_a_running_ref_stops_its_call(sleeper, cluster):
    ref = sleeper.remote(30)
    assert cluster.delete(ref.key) == [ref.key]
    with pytest.raises(ObjectNotFoundError):
        rh.get(ref, timeout=5)


def test_a_worker_crash_during_a_remote_call_surfaces_at_get(own_cluster):
    ref = rh.function(funcs.crash).to(own_cluster).remote(3)
    with pytest.raises(WorkerCrashedError):
        rh.get(ref, timeout=30)
