"""Den auth on a real daemon with a real Den: teammates call a shared cluster with their own Den login.

Alice owns the daemon (this test process, the daemon's token in her runhouse folder); bob and carol are Den
users who reach it with their Den tokens only: over HTTP here, and with the runhouse client in a process of
their own (another runhouse folder, RH_TOKEN and RH_DEN_URL) where the client matters.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import runhouse as rh
from runhouse.daemon_files import DaemonFiles
from runhouse.errors import ConfigError
from runhouse.resources.clusters import local_daemon
from runhouse.rns.den_client import den_client
from runhouse.server.den_auth import ACCESS_TTL_S, HEARTBEAT_INTERVAL_ENV
from tests.conftest import free_port
from tests.integration import funcs
from tests.integration.den.conftest import DenServer, DenUser, sqlite_den_in

HTTP_TIMEOUT_S = 30.0


@pytest.fixture
def den(tmp_path: Path) -> Iterator[DenServer]:
    """A Den of the test's own on SQLite (tests stop it to see the daemon without Den)."""
    with sqlite_den_in(tmp_path) as server:
        yield server


@dataclass
class SharedBox:
    """Alice's Den-auth cluster at ``address`` with ``add`` deployed on it, reached at ``url``."""

    cluster: rh.Cluster
    address: str
    url: str
    function: str
    http: httpx.Client

    def call(self, token: str, *args: int) -> httpx.Response:
        """Call the deployed function over HTTP as curl would, with ``token``."""
        return self.http.post(f"{self.url}/{self.function}/call", json={"args": list(args)},
                              headers={"Authorization": f"Bearer {token}"})

    def control(self, token: str, op: str, meta: str) -> httpx.Response:
        return self.http.post(f"{self.url}/_/{op}", headers={"Authorization": f"Bearer {token}", "X-Rh-Meta": meta})


@pytest.fixture
def box(den: DenServer, alice: DenUser, monkeypatch: pytest.MonkeyPatch) -> Iterator[SharedBox]:
    monkeypatch.setenv(HEARTBEAT_INTERVAL_ENV, "1")
    port = free_port()
    local_daemon.start(port)
    try:
        cluster = rh.cluster(name="box", host="localhost", server_port=port, den_auth=True).save("@/box")
        cluster.up_if_not()
        remote_add = rh.function(funcs.add).to(cluster)
        remote_add.save("@/add")
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
            yield SharedBox(cluster, f"/{alice.name}/box", f"http://127.0.0.1:{port}", remote_add.name, http)
    finally:
        local_daemon.stop(port)


def error_of(response: httpx.Response, status: int, type_name: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_name, error
    return error["message"]


def test_a_teammate_calls_a_shared_function_with_their_own_login(
    den: DenServer, alice: DenUser, box: SharedBox, tmp_path: Path
) -> None:
    bob = den.user("bob")
    rh.function(name="@/add").share([bob.name], access_level="read")
    box.cluster.share([bob.name], access_level="read")
    folder = tmp_path / "bobs_folder"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RH_TOKEN", "RH_DEN_URL")}
    env.update(RH_CONFIG_DIR=str(folder), RH_TOKEN=bob.token, RH_DEN_URL=den.url)
    code = f"""
        import runhouse as rh
        print("RESULT", rh.function(name="/{alice.name}/add")(2, 3))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert "RESULT 5" in out.stdout
    assert not (folder / "daemons").exists() or not any((folder / "daemons").rglob("token"))


def test_a_den_user_without_a_share_is_refused_with_a_clear_message(
    den: DenServer, box: SharedBox
) -> None:
    bob = den.user("bob")
    message = error_of(box.call(bob.token, 1, 2), 403, "PermissionDeniedError")
    assert bob.name in message and box.address in message and "share" in message
    message = error_of(box.call("rh_" + secrets.token_urlsafe(32), 1, 2), 401, "AuthenticationError")
    assert "unknown token" in message and den.url in message


def test_read_access_lets_a_user_call_but_not_deploy_run_or_put(den: DenServer, box: SharedBox) -> None:
    bob = den.user("bob")
    box.cluster.share([bob.name], access_level="read")
    assert box.call(bob.token, 1, 2).json() == {"result": 3}
    assert box.control(bob.token, "status", "{}").status_code == 200
    runs = box.control(bob.token, "runs", "{}")  # who ran what: readers see it
    assert runs.status_code == 200, runs.text
    assert any(run["caller"] == bob.name for run in runs.json()["result"]), runs.text
    for op, meta in [("run", '{"cmds": ["touch /tmp/owned"]}'), ("put", '{"key": "k"}'),
                     ("delete", '{"keys": ["k"]}'), ("autostop", '{"minutes": 1}'),
                     ("env", '{"env": {"name": "e"}}')]:
        message = error_of(box.control(bob.token, op, meta), 403, "PermissionDeniedError")
        assert "read access" in message and "write" in message


def test_write_access_lets_a_user_run_commands(den: DenServer, box: SharedBox) -> None:
    bob = den.user("bob")
    box.cluster.share([bob.name], access_level="write")
    response = box.control(bob.token, "run", '{"cmds": ["echo hi"]}')
    assert response.status_code == 200, response.text
    assert response.json()["result"][0][:2] == [0, "hi\n"]


def test_a_den_token_never_changes_den_auth(den: DenServer, box: SharedBox) -> None:
    bob = den.user("bob")
    box.cluster.share([bob.name], access_level="write")
    meta = f'{{"den_url": "http://127.0.0.1:9", "address": "{box.address}", "heartbeat_key": "x"}}'
    message = error_of(box.control(bob.token, "den_auth", meta), 403, "PermissionDeniedError")
    assert "daemon's own token" in message
    assert box.call(bob.token, 1, 1).json() == {"result": 2}


def test_revoking_the_share_stops_the_user_within_seconds(den: DenServer, box: SharedBox) -> None:
    bob = den.user("bob")
    box.cluster.share([bob.name], access_level="read")
    assert box.call(bob.token, 1, 2).status_code == 200
    den_client().unshare(box.address, [bob.name])
    revoked = time.monotonic()
    while box.call(bob.token, 1, 2).status_code == 200:
        assert time.monotonic() - revoked < ACCESS_TTL_S + 2, "a revoked share kept working"
        time.sleep(0.2)
    assert box.call(bob.token, 1, 2).status_code == 403


def test_with_den_down_den_tokens_are_refused_and_the_daemons_own_token_works(
    den: DenServer, box: SharedBox
) -> None:
    bob = den.user("bob")
    box.cluster.share([bob.name], access_level="read")
    assert box.call(bob.token, 1, 2).status_code == 200
    den.stop()
    time.sleep(ACCESS_TTL_S + 0.5)  # bob's cached answer expires: it is not used once Den cannot confirm it
    for token in (bob.token, "rh_" + secrets.token_urlsafe(32)):
        message = error_of(box.call(token, 1, 2), 503, "DenUnreachableError")
        assert "could not ask Den" in message and den.url in message
    assert box.cluster.status()  # alice holds the daemon's token
    assert box.call(box.cluster._read_token() or "", 4, 5).json() == {"result": 9}


def test_garbage_and_huge_tokens_are_refused_fast(den: DenServer, box: SharedBox) -> None:
    started = time.monotonic()
    for token in ["x" * 10_000, "rh_\u00e9t\u00e9", "two words", "a" * 257]:
        response = box.http.post(f"{box.url}/{box.function}/call", json={"args": [1, 2]},
                                 headers={"Authorization": f"Bearer {token}".encode()})
        assert response.status_code in (401, 431), response.text
    garbage = [secrets.token_urlsafe(16) for _ in range(50)]
    for token in garbage * 2:  # the second round is answered from the cache of refusals
        assert box.call(token, 1, 2).status_code == 401
    assert time.monotonic() - started < 5
    assert box.call(box.cluster._read_token() or "", 1, 2).json() == {"result": 3}


def test_den_auth_is_kept_across_a_restart(den: DenServer, box: SharedBox) -> None:
    bob = den.user("bob")
    box.cluster.share([bob.name], access_level="read")
    box.cluster.restart_server()
    assert box.call(bob.token, 3, 4).json() == {"result": 7}
    folder = Path(DaemonFiles.local(box.cluster.server_port).den_auth)
    assert oct(folder.stat().st_mode & 0o777) == "0o600"
    assert "rhc_" in folder.read_text()


def test_enabling_den_auth_on_a_cluster_not_saved_in_den_is_a_clear_error(
    den: DenServer, alice: DenUser, cluster: rh.Cluster
) -> None:
    unsaved = rh.cluster(name="nowhere", host="localhost", server_port=cluster.server_port)
    with pytest.raises(ConfigError, match="saved in Den"):
        unsaved.enable_den_auth()
    named = rh.cluster(name="@/never_saved", host="localhost", server_port=cluster.server_port)
    with pytest.raises(ConfigError, match="not saved in Den"):
        named.enable_den_auth()
    with pytest.raises(ConfigError, match="saved in Den"):
        rh.cluster(name="unsaved", host="localhost", server_port=cluster.server_port, den_auth=True).up_if_not()


def test_only_writers_get_a_heartbeat_key(den: DenServer, alice: DenUser, box: SharedBox) -> None:
    bob = den.user("bob")
    box.cluster.share([bob.name], access_level="read")
    message = error_of(bob.http.post(f"/v1/cluster-keys{box.address}"), 403, "PermissionDeniedError")
    assert "enable Den auth" in message
