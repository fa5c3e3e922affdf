"""The audit log: who did what to which address and when, filterable, visible only to those who may read it."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, text

from runhouse.den.db import (
    AUDIT_FLUSH_INTERVAL_S,
    MIGRATIONS,
    SCHEMA_VERSION,
    AuditEntry,
    Database,
    Resource,
    SchemaVersion,
    utcnow,
)
from tests.integration.den.conftest import DenServer, DenUser, assert_error, put


def _entries(caller: DenUser, **filters: object) -> list[dict]:
    response = caller.http.get("/v1/audit", params={k: v for k, v in filters.items() if v is not None})
    assert response.status_code == 200, response.text
    return list(response.json()["entries"])


def test_every_kind_of_change_and_read_is_logged_newest_first(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    address = f"/{alice.name}/fn"
    put(alice, address)
    put(alice, address)
    alice.http.get(f"/v1/resources{address}")
    alice.http.post(f"/v1/rollback{address}", json={"version": 1})
    alice.http.patch(f"/v1/resources{address}", json={"public": True})
    alice.http.put(f"/v1/shares{address}", json={"users": [bob.name], "access_level": "write"})
    alice.http.delete(f"/v1/shares{address}", params={"users": [bob.name]})
    alice.http.delete(f"/v1/resources{address}")
    entries = _entries(alice, prefix=address)
    assert [e["action"] for e in entries] == [
        "delete", "unshare", "share", "visibility", "rollback", "read", "update", "create",
    ]
    assert {e["user"] for e in entries} == {alice.name}
    assert entries[2]["detail"] == {"users": [bob.name], "access_level": "write"}
    assert entries[4]["detail"] == {"version": 3, "from_version": 1}
    assert all(datetime.fromisoformat(e["time"]).tzinfo is not None for e in entries)


def test_filters_by_prefix_user_action_and_time(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    alice.http.put(f"/v1/shares/{alice.name}/proj", json={"users": [bob.name], "access_level": "write"})
    put(alice, f"/{alice.name}/proj/a")
    put(alice, f"/{alice.name}/elsewhere")
    time.sleep(0.05)
    middle = datetime.now(timezone.utc)
    time.sleep(0.05)
    put(bob, f"/{alice.name}/proj/a")
    put(bob, f"/{alice.name}/proj/b")

    under_proj = _entries(alice, prefix=f"/{alice.name}/proj")
    assert all(e["address"].startswith(f"/{alice.name}/proj") for e in under_proj) and len(under_proj) == 4
    assert [e["address"] for e in _entries(alice, user=bob.name)] == [f"/{alice.name}/proj/b", f"/{alice.name}/proj/a"]
    assert [e["user"] for e in _entries(alice, prefix=f"/{alice.name}", action="update")] == [bob.name]
    assert {e["user"] for e in _entries(alice, prefix=f"/{alice.name}", since=middle.isoformat())} == {bob.name}
    before = _entries(alice, prefix=f"/{alice.name}", until=middle.isoformat())
    assert {e["user"] for e in before} == {alice.name} and len(before) == 3
    assert len(_entries(alice, prefix=f"/{alice.name}", limit=2)) == 2


def test_others_see_only_entries_on_what_they_can_read(den: DenServer) -> None:
    alice, bob, sam = den.user("alice"), den.user("bob"), den.user("sam")
    put(alice, f"/{alice.name}/shared")
    put(alice, f"/{alice.name}/private")
    alice.http.put(f"/v1/shares/{alice.name}/shared", json={"users": [bob.name]})
    assert _entries(sam, prefix=f"/{alice.name}") == []
    assert {e["address"] for e in _entries(bob, prefix=f"/{alice.name}")} == {f"/{alice.name}/shared"}
    assert {e["address"] for e in _entries(alice, prefix=f"/{alice.name}")} == {
        f"/{alice.name}/shared", f"/{alice.name}/private",
    }


def test_org_members_see_everything_under_the_org(den: DenServer) -> None:
    alice, olga, sam = den.user("alice"), den.user("olga"), den.user("sam")
    org = den.org({alice.name: "admin", olga.name: "member"})
    put(alice, f"/{org}/model")
    alice.http.delete(f"/v1/resources/{org}/model")
    assert [e["action"] for e in _entries(olga, prefix=f"/{org}")] == ["delete", "create"]
    assert _entries(sam, prefix=f"/{org}") == []


def test_users_see_their_own_actions(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    address = f"/{alice.name}/fn"
    put(alice, address)
    alice.http.put(f"/v1/shares{address}", json={"users": [bob.name]})
    bob.http.get(f"/v1/resources{address}")
    alice.http.delete(f"/v1/shares{address}", params={"users": [bob.name]})
    assert [e["action"] for e in _entries(bob, user=bob.name)] == ["read"]


def test_bad_filters_are_clean_4xx(den: DenServer) -> None:
    alice = den.user("alice")
    assert_error(alice.http.get("/v1/audit", params={"action": "drop"}), 400, "BadRequestError")
    assert_error(alice.http.get("/v1/audit", params={"prefix": "alice/x"}), 400, "InvalidNameError")
    assert_error(alice.http.get("/v1/audit", params={"user": "a'b"}), 400, "InvalidNameError")
    assert_error(alice.http.get("/v1/audit", params={"since": "yesterday"}), 422, "ValidationError")
    assert_error(alice.http.get("/v1/audit", params={"limit": 0}), 422, "ValidationError")
    now = datetime.now(timezone.utc)
    backwards = {"since": now.isoformat(), "until": (now - timedelta(hours=1)).isoformat()}
    assert_error(alice.http.get("/v1/audit", params=backwards), 400, "BadRequestError")


def test_reads_are_written_to_the_log_by_themselves_soon_after(den: DenServer) -> None:
    alice = den.user("alice")
    address = f"/{alice.name}/soon"
    put(alice, address)
    assert alice.http.get(f"/v1/resources{address}").status_code == 200
    query = select(func.count()).select_from(AuditEntry).where(
        AuditEntry.address == address, AuditEntry.action == "read")
    deadline = time.monotonic() + 20 * AUDIT_FLUSH_INTERVAL_S
    while True:  # straight from the database: no flush by the audit API or the test helpers
        with den.database.engine.connect() as conn:
            if conn.scalar(query) == 1:
                break
        assert time.monotonic() < deadline, "the read's audit entry was never written"
        time.sleep(AUDIT_FLUSH_INTERVAL_S / 5)


def test_reads_do_not_wait_for_a_writer(den: DenServer) -> None:
    """A read takes no write lock (on SQLite, a deferred BEGIN; on PostgreSQL, no row locks), so it is
    answered while another transaction holds the resource's row locked for writing."""
    alice = den.user("alice")
    address = f"/{alice.name}/busy"
    put(alice, address)
    with den.database.transaction() as session:  # a writer: BEGIN IMMEDIATE / SELECT ... FOR UPDATE
        session.execute(select(Resource).where(Resource.address == address).with_for_update())
        started = time.monotonic()
        response = alice.http.get(f"/v1/resources{address}")
        waited = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert waited < 5, f"the read waited {waited:.1f} s for the writer"


OWNER_OF = {"/alice/proj/fn": "alice", "/alice": "alice", "/acme.io/x": "acme.io", "/b-2/deep/er/still": "b-2"}


def test_a_version_3_audit_log_gains_its_owners(database_url: str) -> None:
    with Database(database_url) as database:
        with database.engine.begin() as conn:  # as Den of schema version 3 left it
            SchemaVersion.__table__.create(conn)  # type: ignore[attr-defined]
            for migration in MIGRATIONS[:3]:
                migration.apply(conn)
                conn.execute(SchemaVersion.__table__.insert().values(  # type: ignore[attr-defined]
                    version=migration.version, description=migration.description))
            for address in OWNER_OF:
                conn.execute(text('INSERT INTO audit_log (time, "user", action, address, detail) '
                                  "VALUES (:now, 'alice', 'read', :address, '{}')"),
                             {"now": utcnow(), "address": address})
        assert database.migrate() == SCHEMA_VERSION
        with database.engine.connect() as conn:
            owners = dict(conn.execute(select(AuditEntry.address, AuditEntry.owner)).all())
    assert owners == OWNER_OF
