"""cluster.status() and runhouse status (tables, --json), and the daemon's GET /metrics (Prometheus)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

import runhouse as rh
from runhouse.errors import WorkerCrashedError
from tests.integration import runs_funcs


def _metrics(cluster, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", cluster.server_port, timeout=10)
    headers = {"Authorization": f"Bearer {token or cluster._read_token()}"}
    conn.request("GET", "/metrics", headers=headers)
    response = conn.getresponse()
    return response.status, response.read().decode()


def _samples(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _cli(*args):
    env = {**os.environ, "COLUMNS": "200"}  # wide enough that rich keeps every header on one line
    return subprocess.run([sys.executable, "-m", "runhouse.cli", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_status_has_daemon_env_worker_and_node_figures(own_cluster):
    fn = rh.function(runs_funcs.square).to(own_cluster)
    fn(2, stream_logs=False)
    with pytest.raises(WorkerCrashedError):
        rh.function(runs_funcs.last_words_then_crash).to(own_cluster)("x", stream_logs=False)
    rh.function(runs_funcs.fails).to(own_cluster)
    with pytest.raises(ValueError):
        rh.function(runs_funcs.fails).to(own_cluster)("y", stream_logs=False)
    info = own_cluster.status()
    assert info["version"] == rh.__version__ and info["uptime_s"] > 0 and "minutes" in info["autostop"]
    [env] = [e for e in info["envs"] if e["name"] == "default"]
    assert env["calls_last_minute"] >= 3 and env["errors_last_minute"] == 2
    assert env["restarts"]["main"] == 1
    assert env["objects"] == 3 and env["runs_in_flight"] == 0
    main = [w for w in env["workers"] if w["role"] == "main" and w["alive"]][0]
    assert main["pid"] > 0 and main["memory_bytes"] > 0 and main["cpu_percent"] >= 0
    assert info["nodes"][0]["workers"] >= 1
    assert info["runs"]["recording"] is True


def test_status_json_and_tables(cluster):
    rh.function(runs_funcs.square).to(cluster)(3, stream_logs=False)
    port = str(cluster.server_port)
    as_json = _cli("status", "here", "--json", "--port", port)
    assert as_json.returncode == 0, as_json.stderr
    info = json.loads(as_json.stdout)
    assert {"version", "uptime_s", "autostop", "envs", "workers", "nodes", "objects", "runs"} <= set(info)
    tables = _cli("status", "--port", port)
    assert tables.returncode == 0, tables.stderr
    for text in ("runhouse daemon", "Envs", "calls/min", "Workers", "CPU %", "restarts", "autostop", "square"):
        assert text in tables.stdout


def test_metrics_parse_and_count_calls_and_errors(cluster):
    fn = rh.function(runs_funcs.fails).to(cluster)
    ok = rh.function(runs_funcs.square).to(cluster)
    _, before_text = _metrics(cluster)
    before = _samples(before_text)
    for x in range(3):
        ok(x, stream_logs=False)
    with pytest.raises(ValueError):
        fn("m", stream_logs=False)
    status, text = _metrics(cluster)
    assert status == 200
    after = _samples(text)
    square = (("kind", "call"), ("method", "call"), ("name", "square"))
    fails = (("kind", "call"), ("method", "call"), ("name", "fails"))

    def grew(name, labels):
        return after[(name, labels)] - before.get((name, labels), 0)

    assert grew("runhouse_calls_total", square) == 3
    assert grew("runhouse_call_errors_total", square) == 0
    assert grew("runhouse_call_errors_total", fails) == 1
    assert grew("runhouse_call_duration_seconds_count", square) == 3
    assert after[("runhouse_bytes_in_total", ())] > before.get(("runhouse_bytes_in_total", ()), 0)
    assert after[("runhouse_bytes_out_total", ())] > 0
    assert ("runhouse_runs_in_flight", ()) in after


def test_metrics_count_worker_restarts(own_cluster):
    with pytest.raises(WorkerCrashedError):
        rh.function(runs_funcs.last_words_then_crash).to(own_cluster)("z", stream_logs=False)
    samples = _samples(_metrics(own_cluster)[1])
    assert samples[("runhouse_worker_restarts_total", (("env", "default"), ("role", "main")))] == 1


def test_metrics_need_the_token(cluster):
    assert _metrics(cluster, token="wrong")[0] == 401
    conn = http.client.HTTPConnection("127.0.0.1", cluster.server_port, timeout=10)
    conn.request("GET", "/metrics")
    assert conn.getresponse().status == 401
