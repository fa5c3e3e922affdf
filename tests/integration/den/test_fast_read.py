"""The load of a resource by a token Den has seen: one query from the event loop, deciding access exactly as
the session path does (shares on folders above, org membership, public, case, revocation at once)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from tests.integration.den.conftest import DenServer, DenUser, assert_error, put, unique


@contextmanager
def statements(den: DenServer) -> Iterator[list[str]]:
    """The SELECTs Den runs through SQLAlchemy (its session path) while inside (not the audit writer's
    inserts, which run in the background whenever they are due)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("SELECT"):
            seen.append(statement)

    event.listen(den.database.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(den.database.engine, "before_cursor_execute", record)


def fresh_client(den: DenServer, user: DenUser) -> DenUser:
    """Another token of ``user``, which this Den has not seen yet (its first request takes the session path)."""
    token = user.http.post("/v1/tokens").json()["token"]
    return DenUser(user.name, token, den.client(token))


def fast_queries(den: DenServer) -> int:
    """How many statements a load through the fast path runs through SQLAlchemy: one on SQLite; none on
    PostgreSQL, where it goes through asyncpg."""
    return 1 if den.database.is_sqlite else 0


def test_a_warm_load_is_one_query_and_answers_as_the_session_path_does(den: DenServer) -> None:
    alice = den.user("alice")
    address = f"/{alice.name}/proj/fn"
    assert put(alice, address, {"resource_type": "function", "n": 1, "nested": {"a": [1, 2.5, None, "é"]}}).is_success
    cold = fresh_client(den, alice)
    with statements(den) as first:
        by_session = cold.http.get(f"/v1/resources{address}")
    assert by_session.status_code == 200, by_session.text
    assert any("tokens" in sql for sql in first)  # a token Den had not seen: the session path
    with statements(den) as second:
        fast = cold.http.get(f"/v1/resources{address}")
    assert fast.status_code == 200, fast.text
    assert len(second) == fast_queries(den), second
    assert fast.json() == by_session.json()
    assert fast.json()["config"]["nested"] == {"a": [1, 2.5, None, "é"]}


def test_a_load_shared_through_a_folder_above_is_one_query(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    address = f"/{alice.name}/team/deep/fn"
    assert put(alice, address).is_success
    shared = alice.http.put(f"/v1/shares/{alice.name}/team", json={"users": [bob.name], "access_level": "read"})
    assert shared.is_success
    assert bob.http.get("/v1/me").is_success  # Den has seen bob's token
    with statements(den) as seen:
        loaded = bob.http.get(f"/v1/resources{address}")
    assert loaded.status_code == 200, loaded.text
    assert len(seen) == fast_queries(den), seen


def test_org_members_and_public_resources_load_and_strangers_get_the_same_403(den: DenServer) -> None:
    alice, olga, sam = den.user("alice"), den.user("olga"), den.user("sam")
    org = den.org({alice.name: "admin", olga.name: "member"})
    in_org, public = f"/{org}/model", f"/{alice.name}/open/fn"
    assert put(alice, in_org).is_success and put(alice, public).is_success
    assert alice.http.patch(f"/v1/resources{public}", json={"public": True}).is_success
    assert olga.http.get(f"/v1/resources{in_org}").status_code == 200
    assert sam.http.get(f"/v1/resources{public}").status_code == 200
    warm = assert_error(sam.http.get(f"/v1/resources{in_org}"), 403, "PermissionDeniedError")
    cold = fresh_client(den, sam)
    assert assert_error(cold.http.get(f"/v1/resources{in_org}"), 403, "PermissionDeniedError") == warm


def test_shares_match_whole_folder_names_exactly_and_case_sensitively(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    for address in (f"/{alice.name}/project/fn", f"/{alice.name}/proj/Fn", f"/{alice.name}/Proj/fn"):
        assert put(alice, address).is_success
    for folder in (f"/{alice.name}/pro", f"/{alice.name}/Proj"):
        assert alice.http.put(f"/v1/shares{folder}", json={"users": [bob.name], "access_level": "write"}).is_success
    assert_error(bob.http.get(f"/v1/resources/{alice.name}/project/fn"), 403)  # /pro is not a folder above
    assert_error(bob.http.get(f"/v1/resources/{alice.name}/proj/Fn"), 403)  # /Proj is not /proj
    assert bob.http.get(f"/v1/resources/{alice.name}/Proj/fn").status_code == 200
    assert_error(bob.http.get(f"/v1/resources/{alice.name}/Proj/FN"), 404, "ObjectNotFoundError")


def test_an_unshare_and_a_logout_take_effect_on_the_next_load(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    address = f"/{alice.name}/s/fn"
    assert put(alice, address).is_success
    assert alice.http.put(f"/v1/shares{address}", json={"users": [bob.name], "access_level": "read"}).is_success
    assert bob.http.get(f"/v1/resources{address}").status_code == 200
    assert alice.http.delete(f"/v1/shares{address}", params={"users": [bob.name]}).is_success
    assert_error(bob.http.get(f"/v1/resources{address}"), 403, "PermissionDeniedError")
    assert alice.http.get(f"/v1/resources{address}").status_code == 200
    assert alice.http.delete("/v1/tokens/current").json() == {"revoked": True}
    assert_error(alice.http.get(f"/v1/resources{address}"), 401, "AuthenticationError")


def test_missing_resources_and_versions_are_404_with_the_versions_there(den: DenServer) -> None:
    alice = den.user("alice")
    address = f"/{alice.name}/{unique('v')}"
    assert put(alice, address).is_success and put(alice, address).is_success
    assert alice.http.get(f"/v1/resources{address}", params={"version": 1}).json()["version"] == 1
    assert alice.http.get(f"/v1/resources{address}").json()["version"] == 2
    message = assert_error(alice.http.get(f"/v1/resources{address}", params={"version": 3}), 404)
    assert "versions 1 to 2" in message
    assert_error(alice.http.get(f"/v1/resources{address}x"), 404, "ObjectNotFoundError")


def test_every_fast_load_is_in_the_audit_log(den: DenServer) -> None:
    alice = den.user("alice")
    address = f"/{alice.name}/{unique('audited')}"
    assert put(alice, address).is_success
    for _ in range(5):
        assert alice.http.get(f"/v1/resources{address}").status_code == 200
    assert den.count("audit_log", address=address, action="read") == 5


def test_loads_go_on_after_postgresql_drops_every_connection(den: DenServer) -> None:
    if den.database.is_sqlite:
        pytest.skip("SQLite has no server to drop connections")
    alice = den.user("alice")
    address = f"/{alice.name}/survivor"
    assert put(alice, address).is_success
    assert alice.http.get(f"/v1/resources{address}").status_code == 200
    url = den.database.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    for _ in range(3):
        assert alice.http.get(f"/v1/resources{address}").status_code == 200
