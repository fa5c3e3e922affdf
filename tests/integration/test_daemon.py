"""The daemon's own API: auth, the key-value store, commands, envs, status, bad input, lifecycle."""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import runhouse as rh
from runhouse.daemon_files import DaemonFiles
from runhouse.errors import (
    AuthenticationError,
    BadRequestError,
    EnvCreationError,
    ObjectNotFoundError,
)
from runhouse.paths import envs_dir
from runhouse.resources.clusters import local_daemon as daemon
from tests.conftest import free_port
from tests.integration import funcs


def _http(cluster, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", cluster.server_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _auth(cluster):
    return {"Authorization": f"Bearer {daemon.read_token(cluster.server_port)}"}


# --- auth ---------------------------------------------------------------------------------------------
def test_health_needs_no_token(cluster):
    status, body = _http(cluster, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}])
def test_requests_without_the_right_token_get_401(cluster, headers):
    rh.function(funcs.add).to(cluster)
    status, body = _http(cluster, "POST", "/add/call", b'{"args": [1, 2]}', headers)
    assert status == 401
    assert json.loads(body)["error"]["type"] == "AuthenticationError"


def test_client_with_wrong_token_raises_authentication_error(cluster):
    stranger = rh.cluster(host="localhost", server_port=cluster.server_port, token="wrong")
    with pytest.raises(AuthenticationError):
        stranger.keys()


def test_token_file_is_private_and_kept_across_restarts(own_cluster):
    path = Path(DaemonFiles.local(own_cluster.server_port).token)
    before = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    own_cluster.restart_server()
    assert path.read_text() == before


# --- JSON callers -------------------------------------------------------------------------------------
def test_any_http_client_can_call_with_json(cluster):
    rh.function(funcs.add).to(cluster)
    status, body = _http(cluster, "POST", "/add/call", b'{"args": [1, 2]}', _auth(cluster))
    assert (status, json.loads(body)) == (200, {"result": 3})
    status, body = _http(cluster, "POST", "/add/call", b'{"kwargs": {"a": "x", "b": "y"}}', _auth(cluster))
    assert json.loads(body) == {"result": "xy"}


def test_curl_with_the_cli_token_works(cluster):
    rh.function(funcs.add).to(cluster)
    token = subprocess.run(
        [sys.executable, "-m", "runhouse.cli", "token", "--port", str(cluster.server_port)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    out = subprocess.run(
        ["curl", "-s", "-H", f"Authorization: Bearer {token}", "-X", "POST",
         f"localhost:{cluster.server_port}/add/call", "-d", '{"args":[1,2]}'],
        capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(out) == {"result": 3}


def test_json_call_of_a_raising_function_reports_the_error_without_500(cluster):
    rh.function(funcs.raise_value_error).to(cluster)
    status, body = _http(cluster, "POST", "/raise_value_error/call", b"{}", _auth(cluster))
    assert status == 422
    assert json.loads(body)["error"]["type"] == "ValueError"


# --- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/no_such_fn/call", "/add/no_such_method", "/_/no_such_endpoint", "/a/b/c"])
def test_unknown_objects_methods_and_endpoints_are_404(cluster, path):
    rh.function(funcs.add).to(cluster)
    status, body = _http(cluster, "POST", path, b"{}", _auth(cluster))
    assert status == 404
    assert json.loads(body)["error"]["type"] == "ObjectNotFoundError"


def test_unknown_object_raises_object_not_found_in_the_client(cluster):
    with pytest.raises(ObjectNotFoundError, match="no_such_fn"):
        cluster.request("/no_such_fn/call").value()
    with pytest.raises(KeyError):
        cluster.get("no_such_key")
    assert cluster.get("no_such_key", default=7) == 7


@pytest.mark.parametrize(
    "body, headers",
    [
        (b"{not json", {}),
        (b"[1, 2]", {}),
        (b'{"args": 3}', {}),
        (b"\x01garbage", {"Content-Type": "application/x-runhouse"}),
        (b"{}", {"Content-Type": "application/x-runhouse", "X-Rh-Meta": "{bad"}),
    ],
)
def test_malformed_requests_are_400(cluster, body, headers):
    rh.function(funcs.add).to(cluster)
    status, response = _http(cluster, "POST", "/add/call", body, {**_auth(cluster), **headers})
    assert status == 400, response
    assert json.loads(response)["error"]["type"] == "BadRequestError"


def test_bad_requests_raise_typed_errors_in_the_client(cluster):
    with pytest.raises(BadRequestError, match="invalid object name"):
        cluster.put("_private", 1)
    with pytest.raises(BadRequestError, match="missing field"):
        cluster.request("/_/deploy", {"name": "x"}).value()


# --- key-value store ----------------------------------------------------------------------------------
def test_put_get_keys_delete(cluster):
    cluster.put("kv_a", {"x": [1, 2]})
    assert cluster.get("kv_a") == {"x": [1, 2]}
    assert "kv_a" in cluster.keys()
    assert cluster.delete("kv_a") == ["kv_a"]
    assert "kv_a" not in cluster.keys()
    assert cluster.delete("kv_a") == []


def test_put_value_is_usable_by_name_in_the_env(cluster):
    import numpy as np

    cluster.put("kv_array", np.arange(10))
    assert cluster.get("kv_array").sum() == 45


# --- commands -----------------------------------------------------------------------------------------
def test_run_returns_codes_and_output(cluster):
    results = cluster.run(["echo hello", "echo oops >&2; exit 3"], stream_logs=False)
    assert results == [(0, "hello\n", ""), (3, "", "oops\n")]


def test_run_streams_output(cluster, capfd):
    cluster.run(["echo streamed-line"])
    assert "streamed-line" in capfd.readouterr().out


def test_run_python(cluster):
    [(code, out, err)] = cluster.run_python(["import sys", "print(sys.version_info[0])"], stream_logs=False)
    assert (code, out.strip()) == (0, "3")


# --- envs ---------------------------------------------------------------------------------------------
def test_env_vars_reach_the_code_and_commands(cluster):
    env = rh.env(env_vars={"RH_TEST_MODE": "prod"}, name="vars_env")
    assert rh.function(funcs.env_var).to(cluster, env=env)("RH_TEST_MODE") == "prod"
    assert cluster.run(["echo $RH_TEST_MODE"], env="vars_env", stream_logs=False)[0][1] == "prod\n"
    assert rh.function(funcs.env_var).to(cluster)("RH_TEST_MODE") is None  # the default env is untouched


def test_env_with_reqs_gets_its_own_venv_cached_by_reqs(cluster, capfd):
    env = rh.env(reqs=["six==1.16.0"], name="six_env")
    fn = rh.function(funcs.version_of).to(cluster, env=env)
    assert fn("six") == "1.16.0"
    assert "installing six==1.16.0" in capfd.readouterr().out  # progress is shown
    began = time.monotonic()
    same = rh.function(funcs.version_of).to(cluster, env=rh.env(reqs=["six==1.16.0"], name="six_env_2"))
    assert same("six") == "1.16.0"
    assert "already installed" in capfd.readouterr().out
    assert time.monotonic() - began < 5


def test_env_with_missing_package_fails_clearly_and_is_not_registered(cluster):
    env = rh.env(reqs=["runhouse-no-such-package-xyz"], name="broken_env")
    with pytest.raises(EnvCreationError, match="runhouse-no-such-package-xyz"):
        rh.function(funcs.add).to(cluster, env=env)
    assert "broken_env" not in [e["name"] for e in cluster.status()["envs"]]
    assert not [p for p in envs_dir().iterdir() if not (p / ".rh-ready").exists()]


# --- status and lifecycle -----------------------------------------------------------------------------
def test_status_lists_envs_objects_and_workers(cluster):
    rh.function(funcs.add).to(cluster)
    info = cluster.status()
    assert "default" in [e["name"] for e in info["envs"]]
    assert {"name": "add", "kind": "function", "env": "default"} in info["objects"]
    main = [w for w in info["workers"] if w["env"] == "default" and w["role"] == "main"][0]
    assert main["alive"] and main["memory_bytes"] > 0 and psutil.pid_exists(main["pid"])
    assert info["uptime_s"] > 0


def test_cli_status_shows_tables(cluster):
    out = subprocess.run(
        [sys.executable, "-m", "runhouse.cli", "status", "--port", str(cluster.server_port)],
        capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "Envs" in out and "Objects" in out and "Workers" in out and "default" in out


def test_stop_leaves_no_orphan_processes(config_dir):
    port = free_port()
    subprocess.run([sys.executable, "-m", "runhouse.cli", "start", "--port", str(port)], check=True)
    try:
        box = rh.cluster(host="localhost", server_port=port)
        rh.function(funcs.slow_pid).to(box).map([0.01] * 4)  # main worker plus the pool
        box.run(["sleep 313 &"], stream_logs=False)  # something a command left running
        pid = daemon.running_pid(port)
        family = [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
        assert len(family) >= 4
        subprocess.run([sys.executable, "-m", "runhouse.cli", "stop", "--port", str(port)], check=True)
        time.sleep(0.2)
        alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert alive == []
        assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "313"]]
        assert daemon.health(port) is None
    finally:
        daemon.stop(port)


def test_daemon_that_cannot_start_reports_its_log(config_dir):
    from runhouse.errors import DaemonStartError

    port = free_port()
    with __import__("socket").socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with pytest.raises(DaemonStartError, match="address already in use|exited"):
            daemon.start(port, timeout=10)


def test_a_large_request_with_a_wrong_token_gets_the_typed_refusal(cluster):
    from runhouse.transport.client import DaemonClient

    with DaemonClient("127.0.0.1", cluster.server_port, "wrong-token") as stranger:
        with pytest.raises(AuthenticationError):
            stranger.request("/_/put", {"key": "k"}, [bytes(64 * 2**20)], timeout=30)


def test_a_second_daemon_on_a_taken_port_leaves_the_first_ones_pid_file(own_cluster):
    port = own_cluster.server_port
    first = daemon.running_pid(port)
    second = subprocess.run(
        [sys.executable, "-c", "from runhouse.server.daemon import main; main()", "--port", str(port)],
        capture_output=True, timeout=60,
    )
    assert second.returncode != 0
    assert first is not None and daemon.running_pid(port) == first
    assert daemon.stop(port) and daemon.health(port) is None
