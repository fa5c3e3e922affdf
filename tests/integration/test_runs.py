"""Every call, map batch and command is a run kept on the cluster with its output (runhouse.server.runs)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

import runhouse as rh
from runhouse.daemon_files import DaemonFiles
from runhouse.errors import BadRequestError, ObjectNotFoundError, WorkerCrashedError
from tests.conftest import running_daemon
from tests.integration import runs_funcs


def _run(cluster, run_id):
    [run] = [r for r in cluster.runs(limit=1000) if r["id"] == run_id]
    return run


def _latest(cluster, name):
    return cluster.runs(name=name, limit=1)[0]


def test_a_call_is_a_run_with_its_stdout_stderr_and_logging_without_streaming(cluster):
    fn = rh.function(runs_funcs.chatty).to(cluster)
    assert fn("quiet-call", stream_logs=False) == "quiet-call"
    run = _latest(cluster, "chatty")
    assert (run["status"], run["kind"], run["method"], run["env"], run["caller"]) == (
        "done", "call", "call", "default", "local")
    assert run["pid"] == cluster.status()["envs"][0]["workers"][0]["pid"]
    assert run["ended_at"] >= run["started_at"] and run["duration_s"] >= 0
    output = cluster.logs(run["id"])
    for line in ("quiet-call to stdout", "quiet-call to stderr", "quiet-call via logging"):
        assert line in output
    assert fn.logs() == output


def test_a_streamed_call_is_recorded_too(cluster, capfd):
    fn = rh.function(runs_funcs.chatty).to(cluster)
    fn("streamed", stream_logs=True)
    assert "streamed to stdout" in capfd.readouterr().out
    assert "streamed to stdout" in fn.logs()


def test_a_failed_run_keeps_its_traceback_and_output(cluster):
    fn = rh.function(runs_funcs.fails).to(cluster)
    with pytest.raises(ValueError, match="boom went wrong"):
        fn("boom", stream_logs=False)
    run = _latest(cluster, "fails")
    assert run["status"] == "failed"
    assert "Traceback" in run["error"] and "ValueError: boom went wrong" in run["error"]
    assert "boom before failing" in cluster.logs(run["id"])


def test_a_crashed_workers_last_output_is_kept_in_its_run(own_cluster):
    fn = rh.function(runs_funcs.last_words_then_crash).to(own_cluster)
    with pytest.raises(WorkerCrashedError):
        fn("dying", stream_logs=False)
    run = _latest(own_cluster, "last_words_then_crash")
    assert run["status"] == "crashed"
    assert "exited with code 3" in run["error"]
    assert "dying: last words" in own_cluster.logs(run["id"])


def test_each_map_batch_is_a_run_with_its_items_output(cluster):
    fn = rh.function(runs_funcs.square).to(cluster)
    assert fn.map([1, 2, 3, 4], stream_logs=False, run_name="squares") == [1, 4, 9, 16]
    runs = [r for r in cluster.runs(name="squares", limit=100) if r["kind"] == "map"]
    assert runs and all(r["status"] == "done" and r["run_name"] == "squares" for r in runs)
    assert sum(r["items"] for r in runs[:4]) >= 4
    output = "".join(cluster.logs(r["id"]) for r in runs[:4])
    for i, x in enumerate([1, 2, 3, 4]):
        assert f"[{i}] squaring {x}" in output


def test_run_name_names_a_run_and_runs_filter_by_it(cluster):
    fn = rh.function(runs_funcs.chatty).to(cluster)
    fn("named", run_name="nightly", stream_logs=False)
    run = cluster.runs(name="nightly", limit=5)[0]
    assert (run["run_name"], run["name"]) == ("nightly", "chatty")
    assert "named to stdout" in cluster.logs(run["id"])


def test_a_bad_run_name_is_a_clear_error(cluster):
    fn = rh.function(runs_funcs.chatty).to(cluster)
    with pytest.raises(BadRequestError, match="run_name"):
        fn("x", run_name="a\nb", stream_logs=False)
    with pytest.raises(BadRequestError, match="limit"):
        cluster.runs(limit=0)


def test_a_refs_run_id_names_its_run(cluster):
    fn = rh.function(runs_funcs.ticks).to(cluster)
    ref = fn.remote(2, 0.01)
    assert ref.run_id and rh.get(ref) == 2
    assert _run(cluster, ref.run_id)["status"] == "done"
    assert "tick 1" in ref.logs()


def test_runs_are_newest_first_and_limited(cluster):
    fn = rh.function(runs_funcs.square).to(cluster)
    for x in range(3):
        fn(x, stream_logs=False)
    runs = cluster.runs(name="square", limit=2)
    assert len(runs) == 2 and runs[0]["started_at"] >= runs[1]["started_at"]
    assert "squaring 2" in cluster.logs(runs[0]["id"])


def test_a_command_is_a_run_and_a_nonzero_exit_fails_it(cluster):
    cluster.run(["echo from-a-command; exit 4"], stream_logs=False, run_name="cmd-run")
    run = cluster.runs(name="cmd-run", limit=1)[0]
    assert (run["kind"], run["name"], run["status"]) == ("command", "run", "failed")
    assert "exited with code 4" in run["error"]
    assert "from-a-command" in cluster.logs(run["id"])


def test_an_unknown_run_is_not_found(cluster):
    with pytest.raises(ObjectNotFoundError, match="no run"):
        cluster.logs("nope")


@pytest.fixture
def small_store(config_dir, monkeypatch):
    """A daemon keeping at most 5 runs and 4 KiB of them: the bounds are reached in a few calls."""
    monkeypatch.setenv("RH_RUNS_MAX_COUNT", "5")
    monkeypatch.setenv("RH_RUNS_MAX_BYTES", "4096")
    with running_daemon("small") as box:
        yield box


def test_the_oldest_runs_are_dropped_beyond_the_count(small_store):
    fn = rh.function(runs_funcs.square).to(small_store)
    for x in range(8):
        fn(x, stream_logs=False)
    runs = small_store.runs(limit=100)
    assert len(runs) == 5
    assert "squaring 7" in small_store.logs(runs[0]["id"])
    assert "squaring 2" not in "".join(small_store.logs(r["id"]) for r in runs)


def test_the_oldest_runs_are_dropped_beyond_the_bytes_and_the_store_survives_a_restart(small_store):
    fn = rh.function(runs_funcs.chatty).to(small_store)
    for i in range(30):
        fn("x" * 200 + str(i), stream_logs=False)
        if i % 10 == 9:
            time.sleep(0.7)  # let the writer flush, so bytes on disk reach the bound
    time.sleep(0.7)
    folder = DaemonFiles.local(small_store.server_port).runs
    on_disk = sum(p.stat().st_size for p in folder.iterdir())
    assert on_disk <= 4096 + 4096 // 8 + 2048  # the bound, plus the segment being filled
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in folder.iterdir())
    before = small_store.runs(limit=100)
    assert before and "x" * 200 + "29" in small_store.logs(before[0]["id"])
    small_store.restart_server()
    after = small_store.runs(limit=100)
    assert before[0]["id"] in {r["id"] for r in after}
    assert "x" * 200 + "29" in small_store.logs(before[0]["id"])


def test_runs_off_records_nothing(config_dir, monkeypatch):
    monkeypatch.setenv("RH_RUNS", "0")
    with running_daemon("norun") as box:
        fn = rh.function(runs_funcs.square).to(box)
        assert fn(3, stream_logs=False) == 9
        assert box.runs() == []
        assert box.status()["runs"]["recording"] is False


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "runhouse.cli", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_cli_logs_prints_a_run_and_the_latest_of_a_name(cluster, in_a_project):
    fn = rh.function(runs_funcs.chatty).to(cluster)
    fn("cli-one", stream_logs=False)
    run = _latest(cluster, "chatty")
    port = str(cluster.server_port)
    by_id = _cli("logs", "here", run["id"], "--port", port)
    assert by_id.returncode == 0, by_id.stderr
    assert "cli-one to stdout" in by_id.stdout
    by_name = _cli("logs", "--name", "chatty", "--port", port)
    assert "cli-one to stdout" in by_name.stdout
    missing = _cli("logs", "here", "no-such-run", "--port", port)
    assert missing.returncode == 1 and "no run" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_logs_follow_tails_a_running_call_until_it_ends(cluster):
    fn = rh.function(runs_funcs.ticks).to(cluster)
    ref = fn.remote(6, 0.4)
    proc = subprocess.Popen([sys.executable, "-m", "runhouse.cli", "logs", "here", ref.run_id, "--follow",
                             "--port", str(cluster.server_port)], stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first == "tick 0\n"
    assert _run(cluster, ref.run_id)["status"] == "running"  # it printed before the call ended
    rest = proc.stdout.read()  # until --follow exits: when the run ended
    assert proc.wait(timeout=30) == 0
    assert (first + rest).splitlines() == [f"tick {i}" for i in range(6)]
    assert rh.get(ref) == 6


def test_concurrent_calls_each_keep_their_own_output(cluster):
    fn = rh.function(runs_funcs.chatty).to(cluster)
    threads = [threading.Thread(target=fn, args=(f"t{i}",), kwargs={"stream_logs": False}) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for run in cluster.runs(name="chatty", limit=8):
        output = cluster.logs(run["id"])
        tags = {line.split()[0] for line in output.splitlines() if line.strip()}
        assert len(tags) == 1, output
