"""Usage in Den: launches, heartbeats and calls per user and hour of a Den-auth cluster, and who may read them.

The daemon tests run a real daemon (heartbeats every second here, ``RH_HEARTBEAT_INTERVAL_S``) against a Den
on SQLite; the API tests run on both databases.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import runhouse as rh
from runhouse.resources.clusters import local_daemon
from runhouse.server.den_auth import HEARTBEAT_INTERVAL_ENV
from tests.conftest import free_port
from tests.integration import funcs
from tests.integration.den.conftest import DenServer, DenUser, assert_error, put, sqlite_den_in

WAIT_S = 20.0


@pytest.fixture
def sqlite_den(tmp_path: Path) -> Iterator[DenServer]:
    with sqlite_den_in(tmp_path) as server:
        yield server


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A free port for a daemon that heartbeats every second; the daemon on it is stopped at the end."""
    monkeypatch.setenv(HEARTBEAT_INTERVAL_ENV, "1")
    number = free_port()
    try:
        yield number
    finally:
        local_daemon.stop(number)


def usage_by_user(info: dict) -> dict[str, int]:
    totals: dict[str, int] = {}
    for row in info["usage"]:
        totals[row["user"]] = totals.get(row["user"], 0) + row["calls"]
    return totals


def wait_for(read, done) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


class TestWithADaemon:
    @pytest.fixture
    def den(self, sqlite_den: DenServer) -> DenServer:
        return sqlite_den

    def test_bringing_a_cluster_up_records_the_launch(self, den: DenServer, alice: DenUser, port: int) -> None:
        cluster = rh.cluster(name="box", host="localhost", server_port=port, den_auth=True).save("@/box")
        cluster.up_if_not()  # starts the daemon: a launch
        info = cluster.den_usage()
        assert len(info["launches"]) == 1
        launch = info["launches"][0]
        assert launch["user"] == alice.name and "@" in launch["origin"] and launch["time"]
        assert den.count("audit_log", action="launch", user=alice.name) == 1
        heartbeat = wait_for(cluster.den_usage, lambda i: i["heartbeat"] is not None)["heartbeat"]
        assert heartbeat["status"], heartbeat

    def test_a_cluster_used_by_two_users_shows_both_in_its_usage(
        self, den: DenServer, alice: DenUser, port: int
    ) -> None:
        cluster = rh.cluster(name="box", host="localhost", server_port=port, den_auth=True).save("@/box")
        cluster.up_if_not()
        name = rh.function(funcs.add).to(cluster).name
        bob, carol = den.user("bob"), den.user("carol")
        cluster.share([bob.name, carol.name], access_level="read")
        with httpx.Client(timeout=30) as http:
            for user, calls in ((bob, 3), (carol, 2)):
                for _ in range(calls):
                    response = http.post(f"http://127.0.0.1:{port}/{name}/call", json={"args": [1, 2]},
                                         headers={"Authorization": f"Bearer {user.token}"})
                    assert response.json() == {"result": 3}
        info = wait_for(cluster.den_usage, lambda i: {bob.name, carol.name} <= set(usage_by_user(i)))
        totals = usage_by_user(info)
        assert totals[bob.name] == 3 and totals[carol.name] == 2, totals
        assert totals.get("(daemon token)", 0) >= 1  # alice's own deploy and calls
        assert all(row["hour"].endswith(":00:00+00:00") for row in info["usage"])
        # bob may read it too (read access), and his read is in the audit log
        seen = bob.http.get(f"/v1/clusters{cluster.rns_address}")
        assert seen.status_code == 200 and usage_by_user(seen.json())[carol.name] == 2
        assert den.count("audit_log", action="read", user=bob.name, address=cluster.rns_address) >= 1


# --- the API, on both databases ------------------------------------------------------------------------------


def _cluster(den: DenServer, owner: DenUser) -> tuple[str, str]:
    """A cluster saved by ``owner``, and its heartbeat key."""
    address = f"/{owner.name}/gpu"
    assert put(owner, address, {"resource_type": "cluster", "name": "gpu"}).status_code == 200
    response = owner.http.post(f"/v1/cluster-keys{address}")
    assert response.status_code == 200, response.text
    return address, response.json()["key"]


def _beat(den: DenServer, address: str, key: str, body: dict) -> httpx.Response:
    return den.client(key).post(f"/v1/heartbeats{address}", json=body)


def test_a_user_without_access_reads_nothing_of_a_cluster(den: DenServer) -> None:
    owner, stranger = den.user("owner"), den.user("stranger")
    address, key = _cluster(den, owner)
    assert _beat(den, address, key, {"status": {"uptime": 1}, "calls": {owner.name: 4}}).status_code == 200
    for where in (address, f"/{owner.name}/missing"):
        message = assert_error(stranger.http.get(f"/v1/clusters{where}"), 403, "PermissionDeniedError")
        assert stranger.name in message
    assert stranger.http.get(f"/v1/access{address}").json() == {"user": stranger.name, "access": None}
    assert_error(stranger.http.post(f"/v1/launches{address}", json={"origin": "x@y"}), 403)
    assert_error(den.client().get(f"/v1/clusters{address}"), 401)
    info = owner.http.get(f"/v1/clusters{address}").json()
    assert usage_by_user(info) == {owner.name: 4} and info["heartbeat"]["status"] == {"uptime": 1}


def test_access_answers_write_read_public_and_nothing(den: DenServer) -> None:
    owner, reader = den.user("owner"), den.user("reader")
    address, _ = _cluster(den, owner)
    assert owner.http.get(f"/v1/access{address}").json() == {"user": owner.name, "access": "write"}
    assert reader.http.get(f"/v1/access{address}").json()["access"] is None
    owner.http.put(f"/v1/shares{address}", json={"users": [reader.name], "access_level": "read"})
    assert reader.http.get(f"/v1/access{address}").json()["access"] == "read"
    assert den.count("audit_log", action="read", user=reader.name, address=address) == 2
    assert_error(den.client("rh_nope").get(f"/v1/access{address}"), 401, "AuthenticationError")
    assert_error(owner.http.get("/v1/access/no/../escape"), 400)


def test_heartbeat_keys_work_only_for_their_cluster_and_the_newest_only(den: DenServer) -> None:
    owner = den.user("owner")
    address, old_key = _cluster(den, owner)
    other = f"/{owner.name}/other"
    put(owner, other, {"resource_type": "cluster", "name": "other"})
    assert_error(_beat(den, other, old_key, {}), 401, "AuthenticationError")
    new_key = owner.http.post(f"/v1/cluster-keys{address}").json()["key"]
    assert_error(_beat(den, address, old_key, {}), 401)
    assert _beat(den, address, new_key, {}).status_code == 200
    assert_error(den.client(owner.token).post(f"/v1/heartbeats{address}", json={}), 401)  # a user token is no key


def test_bad_input_is_a_4xx_never_a_500(den: DenServer) -> None:
    owner = den.user("owner")
    address, key = _cluster(den, owner)
    bad = [
        {"calls": {"not a name!": 1}}, {"calls": {owner.name: -1}}, {"calls": {owner.name: 10**12}},
        {"calls": {f"u{i}": 1 for i in range(1001)}}, {"daemon_calls": -1}, {"status": "up"},
        {"status": {"x": "y" * 70_000}}, {"unknown": 1},
    ]
    for body in bad:
        response = _beat(den, address, key, body)
        assert 400 <= response.status_code < 500, (body, response.text)
    assert_error(owner.http.post(f"/v1/launches{address}", json={"origin": ""}), 400)
    assert owner.http.post(f"/v1/launches{address}", json={"origin": "a" * 300}).status_code == 422
    assert_error(owner.http.post(f"/v1/cluster-keys/{owner.name}/nothing_here"), 404, "ObjectNotFoundError")
    put(owner, f"/{owner.name}/fn")
    assert_error(owner.http.post(f"/v1/cluster-keys/{owner.name}/fn"), 400, "BadRequestError")
    assert_error(den.client("garbage").post(f"/v1/heartbeats{address}", json={}), 401)
    assert_error(den.client("x" * 5000).post(f"/v1/heartbeats{address}", json={}), 401)
