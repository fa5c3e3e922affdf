"""Owner names: users and orgs share one namespace whose names are unique regardless of case, addresses match
exactly (case and LIKE wildcards) on both databases, and the server decides who may create orgs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, inspect, select, text

from runhouse.den import ConflictError, auth
from runhouse.den.db import MIGRATIONS, SCHEMA_VERSION, Database, Org, SchemaVersion, utcnow
from runhouse.errors import ConfigError
from tests.integration.den.conftest import DenProcess, DenServer, assert_error, put, unique


def _case_variants(name: str) -> list[str]:
    return [name.upper(), name.capitalize(), "".join(c.upper() if i % 2 else c for i, c in enumerate(name))]


def test_an_org_cannot_take_a_users_name_in_another_case(den: DenServer) -> None:
    alice, mallory = den.user("alice"), den.user("mallory")
    put(alice, f"/{alice.name}/private-plans")
    for variant in _case_variants(alice.name):
        message = assert_error(mallory.http.post("/v1/orgs", json={"name": variant}), 409, "ConflictError")
        assert "case" in message and repr(alice.name) in message
        listing = mallory.http.get(f"/v1/folders/{variant}")
        assert listing.json()["entries"] == [] and "private-plans" not in listing.text
    assert mallory.http.get("/v1/me").json()["orgs"] == []


def test_a_user_or_org_cannot_take_an_orgs_name_in_another_case(den: DenServer) -> None:
    alice = den.user("alice")
    org = den.org({alice.name: "admin"})
    for variant in _case_variants(org):
        with pytest.raises(ConflictError, match="only by case"):
            den.database.run(lambda session, name=variant: auth.add_user(session, name))
        assert_error(alice.http.post("/v1/orgs", json={"name": variant}), 409, "ConflictError")
    assert "already an org" in assert_error(alice.http.post("/v1/orgs", json={"name": org}), 409, "ConflictError")


def test_of_many_concurrent_creations_differing_only_by_case_one_wins(den: DenServer) -> None:
    users = [den.user("racer") for _ in range(8)]
    name = unique("race")
    variants = [name.upper(), name, name.capitalize(), *(name[:i] + name[i:].upper() for i in range(1, 6))]
    statuses: list[int] = []
    start = threading.Barrier(len(users))

    def create(user_http: httpx.Client, variant: str) -> None:
        start.wait()
        statuses.append(user_http.post("/v1/orgs", json={"name": variant}).status_code)

    threads = [threading.Thread(target=create, args=(user.http, variant))
               for user, variant in zip(users, variants, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [409] * (len(users) - 1)
    with den.database.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Org).where(func.lower(Org.name) == name)) == 1


def test_folder_listings_match_names_exactly(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    for address in ("proj/shared", "Proj/hidden", "PROJ/deep/hidden", "p_oj/under", "pXoj/other", "proj_x/y"):
        assert put(alice, f"/{alice.name}/{address}").status_code == 200
    alice.http.put(f"/v1/shares/{alice.name}/proj", json={"users": [bob.name]})

    def names(user_http: httpx.Client, folder: str) -> list[str]:
        response = user_http.get(f"/v1/folders/{alice.name}/{folder}")
        assert response.status_code == 200, response.text
        return [entry["name"] for entry in response.json()["entries"]]

    assert names(bob.http, "proj") == ["shared"]
    assert names(alice.http, "proj") == ["shared"]
    assert names(alice.http, "Proj") == ["hidden"]
    assert names(alice.http, "p_oj") == ["under"]
    assert {e["address"] for e in alice.http.get("/v1/audit", params={"prefix": f"/{alice.name}/proj"}).json()[
        "entries"]} == {f"/{alice.name}/proj", f"/{alice.name}/proj/shared"}


def test_deleting_a_resource_beside_a_folder_differing_by_case_drops_its_shares(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    put(alice, f"/{alice.name}/x")
    alice.http.put(f"/v1/shares/{alice.name}/x", json={"users": [bob.name]})
    put(alice, f"/{alice.name}/X/y")
    assert alice.http.delete(f"/v1/resources/{alice.name}/x").status_code == 200
    put(alice, f"/{alice.name}/x")
    assert_error(bob.http.get(f"/v1/resources/{alice.name}/x"), 403, "PermissionDeniedError")


# ---------------------------------------------------------------------------------------- org policy


@pytest.fixture
def policy_den(request: pytest.FixtureRequest, database_url: str) -> Iterator[DenServer]:
    """A Den over its own database with the org policy the test gives (``indirect`` parameter)."""
    server = DenServer(database_url, org_policy=request.param).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("policy_den", [auth.OrgPolicy(max_orgs_per_user=2)], indirect=True)
def test_a_user_creates_at_most_the_orgs_the_server_allows(policy_den: DenServer) -> None:
    alice = policy_den.user("alice")
    for _ in range(2):
        assert alice.http.post("/v1/orgs", json={"name": unique("org")}).status_code == 200
    refused = alice.http.post("/v1/orgs", json={"name": unique("org")})
    assert "at most 2" in assert_error(refused, 403, "PermissionDeniedError")
    assert policy_den.count("orgs") == 2
    policy_den.org({alice.name: "admin"})  # a server administrator still may, and it does not count
    assert policy_den.user("bob").http.post("/v1/orgs", json={"name": unique("org")}).status_code == 200


@pytest.mark.parametrize("policy_den", [auth.OrgPolicy(max_orgs_per_user=3)], indirect=True)
def test_concurrent_creations_stay_within_the_limit(policy_den: DenServer) -> None:
    alice = policy_den.user("alice")
    statuses: list[int] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        statuses.append(alice.http.post("/v1/orgs", json={"name": unique("org")}).status_code)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 3 + [403] * 5
    assert policy_den.count("orgs") == 3


@pytest.mark.parametrize("policy_den", [auth.OrgPolicy(users_create_orgs=False)], indirect=True)
def test_a_server_may_leave_creating_orgs_to_its_administrators(policy_den: DenServer) -> None:
    alice = policy_den.user("alice")
    refused = alice.http.post("/v1/orgs", json={"name": unique("org")})
    assert "runhouse den org add" in assert_error(refused, 403, "PermissionDeniedError")
    assert policy_den.count("orgs") == 0


def test_by_default_a_user_may_create_a_few_orgs(den: DenServer) -> None:
    alice = den.user("alice")
    limit = auth.OrgPolicy().max_orgs_per_user
    for _ in range(limit):
        assert alice.http.post("/v1/orgs", json={"name": unique("org")}).status_code == 200
    assert_error(alice.http.post("/v1/orgs", json={"name": unique("org")}), 403, "PermissionDeniedError")


def test_den_serve_takes_the_org_policy_from_its_options(database_url: str, tmp_path: Path) -> None:
    with Database(database_url) as database:
        database.migrate()
        token = database.run(lambda session: auth.add_user(session, "kim"))
    den = DenProcess(database_url, tmp_path, "--max-orgs-per-user", "1").start()
    try:
        client = httpx.Client(base_url=den.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert client.post("/v1/orgs", json={"name": "kims-org"}).status_code == 200
        assert_error(client.post("/v1/orgs", json={"name": "kims-2nd"}), 403, "PermissionDeniedError")
    finally:
        den.stop()
    closed = DenProcess(database_url, tmp_path, "--no-user-orgs").start()
    try:
        client = httpx.Client(base_url=closed.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert_error(client.post("/v1/orgs", json={"name": "other"}), 403, "PermissionDeniedError")
    finally:
        closed.stop()


# ----------------------------------------------------------------------------------------- migration


def _database_at_version_2(url: str, owners: list[tuple[str, str]]) -> None:
    """A database as Den of schema version 2 left it, with ``owners`` (kind, name) added as it added them."""
    with Database(url) as database, database.engine.begin() as conn:
        SchemaVersion.__table__.create(conn)  # type: ignore[attr-defined]
        for migration in MIGRATIONS[:2]:
            migration.apply(conn)
            conn.execute(SchemaVersion.__table__.insert().values(  # type: ignore[attr-defined]
                version=migration.version, description=migration.description))
        for kind, name in owners:
            conn.execute(text(f"INSERT INTO {kind}s (name, created_at) VALUES (:name, :now)"),
                         {"name": name, "now": utcnow()})


def test_the_migration_refuses_owner_names_that_already_differ_only_by_case(database_url: str) -> None:
    _database_at_version_2(database_url, [("user", "alice"), ("org", "ALICE"), ("user", "bob"), ("org", "Bob"),
                                          ("user", "carol")])
    with Database(database_url) as database:
        with pytest.raises(ConfigError, match="differ only by case") as refused:
            database.migrate()
        assert "user 'alice' and org 'ALICE'" in str(refused.value) and "carol" not in str(refused.value)
        assert database.schema_version() == 2 and "owners" not in inspect(database.engine).get_table_names()
        with database.engine.begin() as conn:
            conn.execute(text("UPDATE orgs SET name = 'alice-team' WHERE name = 'ALICE'"))
            conn.execute(text("DELETE FROM orgs WHERE name = 'Bob'"))
        assert database.migrate() == SCHEMA_VERSION
        with pytest.raises(ConflictError, match="only by case"):
            database.run(lambda session: auth.add_user(session, "Alice-Team"))
        with pytest.raises(ConflictError, match="only by case"):
            database.run(lambda session: auth.add_org(session, "CAROL", {}))
        database.run(lambda session: auth.add_org(session, "alice-team", {"alice": "admin"}))
