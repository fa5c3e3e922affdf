"""The daemon's HTTP layer against hostile and careless clients (issue 13: items 7, 8, 12 and 14).

Bodies cost what arrives, never what a header declares, and are capped; connections that never finish a
request are closed within seconds and cannot lock out the callers that hold the token; bad options and
bodies get a 4xx naming the problem; answers to JSON clients are valid JSON; the daemon's files are
owner-only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import runhouse as rh
from runhouse.daemon_files import DaemonFiles
from runhouse.errors import BadRequestError, DaemonStartError, PayloadTooLargeError
from runhouse.resources.clusters import local_daemon as daemon
from runhouse.server.daemon import BODY_IDLE_TIMEOUT_S, HEAD_TIMEOUT_S
from tests.conftest import running_daemon
from tests.integration import funcs, hardening_funcs

MIB = 1024 * 1024
# Slack over the daemon's own deadlines: its sweep runs twice a second, and this machine may be busy.
_SLACK_S = 3.0


# --- helpers ------------------------------------------------------------------------------------------
def _token(cluster: rh.Cluster) -> str:
    token = daemon.read_token(cluster.server_port)
    assert token is not None
    return token


def _connect(cluster: rh.Cluster) -> socket.socket:
    return socket.create_connection(("127.0.0.1", cluster.server_port), timeout=30)


def _head(path: str, headers: dict[str, str], method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()


def _post(cluster: rh.Cluster, path: str, body: bytes = b"", meta: object = None, runhouse_client: bool = False,
          raw_meta: str | None = None) -> tuple[int, dict]:
    """POST with the token; returns the status and the parsed JSON answer."""
    headers = {"Authorization": f"Bearer {_token(cluster)}", "Content-Length": str(len(body))}
    if runhouse_client:
        headers["Content-Type"] = "application/x-runhouse"
    if raw_meta is not None or meta is not None:
        headers["X-Rh-Meta"] = raw_meta if raw_meta is not None else json.dumps(meta)
    with _connect(cluster) as sock:
        sock.sendall(_head(path, headers) + body)
        status, answer_headers, answer = _response(sock)
    framed = answer_headers.get("content-type") == "application/x-runhouse"
    return status, {"framed": True} if framed else json.loads(answer)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the daemon closes ``sock`` (FIN or reset) within ``seconds``, reading what it sends meanwhile."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def _daemon_process(cluster: rh.Cluster) -> psutil.Process:
    pid = daemon.running_pid(cluster.server_port)
    assert pid is not None
    return psutil.Process(pid)


def _connections_held(cluster: rh.Cluster) -> int:
    port = cluster.server_port
    return sum(1 for c in _daemon_process(cluster).net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def _half_open(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that start a request head and never finish it (a slowloris), without a token."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
    time.sleep(0.5)
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.send(b"POST /add/call HTTP/1.1\r\nHost: x\r\nContent-Le")
    return sockets


@contextlib.contextmanager
def _daemon_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[rh.Cluster]:
    """A daemon of the test's own, started with the given environment variables."""
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with running_daemon("hardened") as box:
            patch.undo()
            yield box


@contextlib.contextmanager
def _daemon_started_with_open_file_limit(limit: int) -> Iterator[rh.Cluster]:
    """A daemon of the test's own that inherits ``limit`` as its soft limit of open files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.ExitStack() as stack:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            box = stack.enter_context(running_daemon("attacked"))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        yield box


@pytest.fixture
def many_files() -> None:
    """Room for thousands of sockets in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 12_000:
        pytest.skip(f"the open-file hard limit ({hard}) is too low for thousands of sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- item 7: bodies -----------------------------------------------------------------------------------
def test_a_declared_content_length_costs_nothing_until_the_bytes_arrive(own_cluster):
    add = rh.function(funcs.add).to(own_cluster)
    process = _daemon_process(own_cluster)
    before = process.memory_info().rss
    headers = {"Authorization": f"Bearer {_token(own_cluster)}", "Content-Length": str(4 * 1024**3),
               "Content-Type": "application/x-runhouse"}
    with _connect(own_cluster) as sock:
        sock.sendall(_head("/_/put", headers, "POST") + b"x" * 1000)
        assert add(1, 2) == 3  # other requests flow meanwhile
        assert process.memory_info().rss - before < 64 * MIB


def test_a_body_over_the_cap_is_refused_with_413_before_it_is_sent(monkeypatch):
    with _daemon_with(monkeypatch, RH_MAX_BODY_BYTES=str(MIB)) as box:
        headers = {"Authorization": f"Bearer {_token(box)}", "Content-Length": str(2 * MIB),
                   "X-Rh-Meta": '{"key": "big"}'}
        with _connect(box) as sock:
            sock.settimeout(10)
            sock.sendall(_head("/_/put", headers))  # the body is never sent
            status, _, body = _response(sock)
        assert status == 413
        error = json.loads(body)["error"]
        assert error["type"] == "PayloadTooLargeError" and "RH_MAX_BODY_BYTES" in error["message"]


def test_a_chunked_body_over_the_cap_is_refused_with_413(monkeypatch):
    with _daemon_with(monkeypatch, RH_MAX_BODY_BYTES=str(MIB)) as box:
        headers = {"Authorization": f"Bearer {_token(box)}", "Transfer-Encoding": "chunked",
                   "X-Rh-Meta": '{"key": "big"}'}
        chunk = b"%x\r\n" % (256 * 1024) + b"x" * (256 * 1024) + b"\r\n"
        with _connect(box) as sock:
            sock.sendall(_head("/_/put", headers) + chunk * 5)
            status, _, body = _response(sock)
        assert status == 413 and json.loads(body)["error"]["type"] == "PayloadTooLargeError"


def test_the_client_raises_payload_too_large_and_bodies_under_the_cap_work(monkeypatch):
    with _daemon_with(monkeypatch, RH_MAX_BODY_BYTES=str(MIB)) as box:
        with pytest.raises(PayloadTooLargeError):
            box.put("big", "x" * (2 * MIB))  # a str travels in the body (large bytes may go by shared memory)
        box.put("small", "x" * (MIB - 1024))
        assert len(box.get("small")) == MIB - 1024


def test_a_bad_body_cap_stops_the_daemon_with_a_clear_message(monkeypatch):
    with pytest.raises(DaemonStartError, match="RH_MAX_BODY_BYTES='lots' is not a positive integer"):
        with _daemon_with(monkeypatch, RH_MAX_BODY_BYTES="lots"):
            pass


# --- item 8: connections ------------------------------------------------------------------------------
def test_idle_and_half_sent_connections_are_closed_within_seconds(own_cluster):
    add = rh.function(funcs.add).to(own_cluster)
    auth = {"Authorization": f"Bearer {_token(own_cluster)}"}
    silent = _connect(own_cluster)
    half_head = _connect(own_cluster)
    half_head.sendall(b"POST /add/call HTTP/1.1\r\nHost: x\r\n")
    kept_alive = _connect(own_cluster)
    kept_alive.sendall(_head("/_/status", {**auth, "Content-Length": "0"}))
    assert _response(kept_alive)[0] == 200
    half_body = _connect(own_cluster)
    half_body.sendall(_head("/_/put", {**auth, "Content-Length": "100"}) + b"x" * 10)
    assert add(1, 2) == 3  # our client keeps its connection alive between calls

    started = time.monotonic()
    for sock in (silent, half_head, kept_alive):
        assert _closed_within(sock, HEAD_TIMEOUT_S + _SLACK_S - (time.monotonic() - started))
    assert _closed_within(half_body, BODY_IDLE_TIMEOUT_S + _SLACK_S - (time.monotonic() - started))
    for sock in (silent, half_head, kept_alive, half_body):
        sock.close()
    assert add(2, 3) == 5  # its closed connection is replaced, the call is not lost


def test_calls_are_answered_under_5000_half_open_connections(many_files, config_dir):
    with _daemon_started_with_open_file_limit(1024) as box:  # a common default
        add = rh.function(funcs.add).to(box)
        attack = _half_open(box.server_port, 5000)
        try:
            results: list[int] = []

            def caller(offset: int) -> None:
                results.extend(add(offset, i) for i in range(20))

            threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(results) == sorted(k + i for k in range(8) for i in range(20))
            assert box.keys() is not None
        finally:
            for sock in attack:
                sock.close()


def test_connections_over_the_cap_close_the_longest_waiting_first(many_files, monkeypatch):
    with _daemon_with(monkeypatch, RH_MAX_CONNECTIONS="300") as box:
        add = rh.function(funcs.add).to(box)
        attack = _half_open(box.server_port, 2000)
        try:
            assert add(1, 2) == 3
            assert _connections_held(box) <= 300 + 5
        finally:
            for sock in attack:
                sock.close()


def test_a_long_head_without_the_token_is_refused_with_431(cluster):
    with _connect(cluster) as sock:
        sock.sendall(b"POST /_/status HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 70_000)  # and so on
        status, headers, body = _response(sock)
        assert status == 431 and headers["connection"] == "close"
        assert json.loads(body)["error"]["type"] == "PayloadTooLargeError"
        assert _closed_within(sock, 5)


def test_callers_with_the_token_may_send_long_heads(cluster):
    commands = ["true " + "x" * 100_000] * 3  # the options travel in the X-Rh-Meta header, read in several parts
    assert [code for code, _, _ in cluster.run(commands, stream_logs=False)] == [0, 0, 0]


@pytest.mark.parametrize("path, method", [("/_/status", "POST"), ("/health", "GET")])
def test_a_stranger_gets_one_answer_per_connection(cluster, path, method):
    with _connect(cluster) as sock:
        sock.sendall(_head(path, {"Content-Length": "0"}, method) * 50)  # pipelined, and never read
        status, headers, _ = _response(sock)
        assert status in (200, 401) and headers["connection"] == "close"
        assert _closed_within(sock, 5)


# --- item 12: bad input -------------------------------------------------------------------------------
def test_json_nested_5000_deep_is_400(cluster):
    rh.function(funcs.add).to(cluster)
    deep = b"[" * 5000 + b"]" * 5000
    status, answer = _post(cluster, "/add/call", b'{"args": ' + deep + b"}")
    assert status == 400 and "nested too deeply" in answer["error"]["message"]
    status, answer = _post(cluster, "/add/call", raw_meta='{"refs": ' + "[" * 5000 + "]" * 5000 + "}",
                           runhouse_client=True)
    assert status == 400 and "nested too deeply" in answer["error"]["message"]


def test_json_deep_enough_to_parse_but_not_to_pass_on_is_400(cluster):
    rh.function(funcs.add).to(cluster)
    deep = b"[" * 900 + b"]" * 900
    status, answer = _post(cluster, "/add/call", b'{"args": ' + deep + b"}")
    assert status == 400 and "nested too deeply" in answer["error"]["message"]


@pytest.mark.parametrize("timeout", ["NaN", "Infinity", "-1", "0", "1e30", "\"10\"", "true", "[1]"])
def test_bad_call_timeouts_are_400(cluster, timeout):
    rh.function(funcs.add).to(cluster)
    status, answer = _post(cluster, "/add/call", b'{"args": [1, 2]}', raw_meta='{"timeout": ' + timeout + "}")
    assert status == 400, answer
    assert "'timeout' must be a number of seconds" in answer["error"]["message"]


def test_a_good_call_timeout_still_works(cluster):
    rh.function(funcs.add).to(cluster)
    assert _post(cluster, "/add/call", b'{"args": [1, 2]}', meta={"timeout": 30}) == (200, {"result": 3})


@pytest.mark.parametrize("timeout", ["NaN", "-1", "Infinity", "\"1\""])
def test_bad_get_timeouts_are_400(cluster, timeout):
    status, answer = _post(cluster, "/_/get", raw_meta='{"key": "k", "timeout": ' + timeout + "}")
    assert status == 400 and "'timeout'" in answer["error"]["message"]


@pytest.mark.parametrize("keys", [[1, 2], "a", None, {"a": 1}])
def test_ready_needs_a_list_of_strings(cluster, keys):
    status, answer = _post(cluster, "/_/ready", meta={"keys": keys})
    assert status == 400 and "'keys'" in answer["error"]["message"]


def test_map_sizes_must_be_byte_counts(cluster):
    for sizes in (["1", "2"], [-1, 1], [1.5], [True]):
        status, answer = _post(cluster, "/_/map", meta={"name": "add", "method": "call", "sizes": sizes},
                               runhouse_client=True)
        assert status == 400 and "'sizes'" in answer["error"]["message"], sizes


def test_delete_needs_a_list_of_strings(cluster):
    cluster.put("kept", 1)
    for keys in ([1, 2], "kept", [None]):
        status, answer = _post(cluster, "/_/delete", meta={"keys": keys})
        assert status == 400 and "'keys' must be a list of strings" in answer["error"]["message"]
    with pytest.raises(BadRequestError, match="'keys'"):
        cluster.request("/_/delete", {"keys": [1]}).value()
    assert cluster.get("kept") == 1


def test_commands_with_nul_are_400(cluster):
    status, answer = _post(cluster, "/_/run", meta={"cmds": ["echo a\0b"]})
    assert status == 400 and "NUL" in answer["error"]["message"]


def test_unknown_options_are_400_and_name_the_known_ones(cluster):
    rh.function(funcs.add).to(cluster)
    status, answer = _post(cluster, "/add/call", b'{"args": [1, 2]}', meta={"timout": 5})
    assert status == 400 and "'timout'" in answer["error"]["message"] and "timeout" in answer["error"]["message"]


def test_a_nan_result_reaches_a_json_client_as_valid_json(cluster):
    rh.function(hardening_funcs.non_finite).to(cluster)
    status, answer = _post(cluster, "/non_finite/call", b"{}")
    assert status == 200
    assert answer == {"result": {"nan": None, "inf": None, "list": [1.5, None], "text": "NaN and Infinity"}}
    assert rh.function(hardening_funcs.non_finite).to(cluster)()["list"][1] == float("-inf")


def test_json_results_are_passed_through_unchanged(cluster):
    rh.function(hardening_funcs.echo).to(cluster)
    value = {"a": [1, 2.5, "x\u00e9"], "b": None, "c": {"d": True}}
    assert _post(cluster, "/echo/call", json.dumps({"args": [value]}).encode()) == (200, {"result": value})


def test_getattr_for_json_clients_is_a_clear_400(cluster):
    rh.module(funcs.Counter).to(cluster)(name="json_counter")
    status, answer = _post(cluster, "/_/getattr", meta={"name": "json_counter", "attr": "value"})
    assert status == 400 and "runhouse client" in answer["error"]["message"]


def test_json_clients_can_create_instances_and_set_attributes(cluster):
    rh.module(funcs.Counter).to(cluster)
    status, _ = _post(cluster, "/_/instantiate", b'{"args": [5]}', meta={"name": "json_made", "class_name": "Counter"})
    assert status == 200
    assert _post(cluster, "/json_made/increment", b'{"args": [2]}') == (200, {"result": 7})
    assert _post(cluster, "/_/setattr", b"40", meta={"name": "json_made", "attr": "value"})[0] == 200
    assert _post(cluster, "/json_made/increment", b"{}") == (200, {"result": 41})


_OPTION_NAMES = ["env", "name", "kind", "spec", "version", "class_name", "refs", "method", "sizes", "stream_logs",
                 "shm", "key", "keys", "attr", "cmds", "python", "timeout", "remote", "enqueue", "bogus"]
_BAD_VALUES = ["NaN", "Infinity", "-1", "0", "1e400", "1" + "0" * 30, '""', '"x\\u0000"', "[]", "[1]", '["a", 2]',
               "{}", '{"a": 1}', "true", "1.5"]


@pytest.mark.parametrize("op", ["env", "deploy", "instantiate", "map", "put", "get", "ready", "delete", "keys",
                                "getattr", "setattr", "run", "status", "no_such_op"])
def test_no_option_value_gets_a_500(cluster, op):
    rh.function(funcs.add).to(cluster)
    paths = ["/_/" + op] if op != "status" else ["/_/status", "/add/call"]
    for path in paths:
        for name in _OPTION_NAMES:
            for value in _BAD_VALUES:
                for runhouse_client in (False, True):
                    status, answer = _post(cluster, path, raw_meta=f'{{"{name}": {value}}}',
                                           runhouse_client=runhouse_client)
                    assert status < 500, (path, name, value, answer)
                    assert status == 200 or "error" in answer


@pytest.mark.parametrize("meta", ["[]", "1", "null", '"s"', "{", '{"a": 1} x'])
def test_the_options_header_must_be_a_json_object(cluster, meta):
    rh.function(funcs.add).to(cluster)
    status, answer = _post(cluster, "/add/call", b'{"args": [1, 2]}', raw_meta=meta)
    assert (status, answer["error"]["type"]) == (400, "BadRequestError")


@pytest.mark.parametrize("body", [b"NaN", b'{"args": {"a": 1}}', b'{"kwargs": []}', b"1" * 5000, b"\xff\xfe",
                                  b'{"args": [1, 2], "kwargs": {"c": NaN}}', b'"\\ud800"'])
def test_bad_json_call_bodies_are_4xx(cluster, body):
    rh.function(funcs.add).to(cluster)
    status, answer = _post(cluster, "/add/call", body)
    assert 400 <= status < 500 and "error" in answer


# --- item 14: file modes ------------------------------------------------------------------------------
def _modes(files: DaemonFiles) -> dict[str, int]:
    folder = Path(files.folder)
    paths = [folder.parent, folder, *folder.rglob("*")]
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in paths}


def _private(modes: dict[str, int]) -> bool:
    return all(mode == (0o700 if os.path.isdir(path) else 0o600) for path, mode in modes.items())


def test_daemon_files_are_owner_only(own_cluster):
    own_cluster.put("v", 1)
    rh.function(funcs.add).to(own_cluster)  # writes the registry
    files = DaemonFiles.local(own_cluster.server_port)
    modes = _modes(files)
    assert {"pid", "daemon.log", "launch.json", "registry.json", "token"} <= {Path(p).name for p in modes}
    assert _private(modes), modes


def test_daemon_files_left_open_by_an_older_version_are_made_owner_only_at_start(own_cluster):
    rh.function(funcs.add).to(own_cluster)
    files = DaemonFiles.local(own_cluster.server_port)
    for path in _modes(files):
        os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
    own_cluster.restart_server()
    assert _private(_modes(files)), _modes(files)
