"""Users, tokens and orgs: tokens work, are stored only as hashes, and can be revoked."""

from __future__ import annotations

import hashlib
import time

from sqlalchemy import text

from runhouse.den.auth import TOKEN_CACHE_TTL_S, Account, TokenCache
from tests.integration.den.conftest import DenServer, assert_error, unique


def test_a_user_token_authenticates_as_that_user(den: DenServer) -> None:
    alice = den.user("alice", email=f"{unique('a')}@example.com")
    me = alice.http.get("/v1/me")
    assert me.status_code == 200
    assert me.json()["name"] == alice.name
    assert me.json()["email"].endswith("@example.com")


def test_tokens_are_stored_only_as_their_sha256(den: DenServer) -> None:
    alice = den.user("alice")
    with den.database.engine.connect() as conn:
        rows = [tuple(map(str, row)) for row in conn.execute(text("SELECT * FROM tokens"))]
    assert not any(alice.token in value for row in rows for value in row)
    assert any(hashlib.sha256(alice.token.encode()).hexdigest() in row for row in rows)


def test_missing_wrong_and_unknown_tokens_get_401(den: DenServer) -> None:
    anonymous = den.client()
    assert "missing token" in assert_error(anonymous.get("/v1/me"), 401, "AuthenticationError")
    basic = anonymous.get("/v1/me", headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert_error(basic, 401, "AuthenticationError")
    unknown = den.client("rh_" + "x" * 43).get("/v1/me")
    assert "unknown token" in assert_error(unknown, 401, "AuthenticationError")
    latin = anonymous.get("/v1/me", headers={"Authorization": "Bearer caf\xe9".encode("latin-1")})
    assert_error(latin, 401, "AuthenticationError")
    assert_error(den.client("x" * 10_000).get("/v1/me"), 401, "AuthenticationError")


def test_a_second_token_works_and_revoking_one_keeps_the_other(den: DenServer) -> None:
    alice = den.user("alice")
    second = alice.http.post("/v1/tokens")
    assert second.status_code == 200
    other = den.client(second.json()["token"])
    assert other.get("/v1/me").json()["name"] == alice.name
    assert other.delete("/v1/tokens/current").json() == {"revoked": True}
    assert_error(other.get("/v1/me"), 401, "AuthenticationError")
    assert alice.http.get("/v1/me").status_code == 200


def test_me_lists_the_users_orgs_and_roles(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    org = den.org({alice.name: "admin", bob.name: "member"})
    assert {"name": org, "role": "member"} in bob.http.get("/v1/me").json()["orgs"]
    assert {"name": org, "role": "admin"} in alice.http.get("/v1/me").json()["orgs"]


def test_users_and_orgs_share_one_namespace(den: DenServer) -> None:
    alice = den.user("alice")
    taken = alice.http.post("/v1/orgs", json={"name": alice.name})
    assert "already a user" in assert_error(taken, 409, "ConflictError")


def test_an_org_admin_manages_members_and_others_cannot(den: DenServer) -> None:
    alice, bob, carol = den.user("alice"), den.user("bob"), den.user("carol")
    name = unique("org")
    created = alice.http.post("/v1/orgs", json={"name": name})
    assert created.json()["members"] == [{"user": alice.name, "role": "admin"}]
    added = alice.http.put(f"/v1/orgs/{name}/members/{bob.name}", json={"role": "member"})
    assert {"user": bob.name, "role": "member"} in added.json()["members"]
    denied = bob.http.put(f"/v1/orgs/{name}/members/{carol.name}", json={"role": "member"})
    assert_error(denied, 403, "PermissionDeniedError")
    assert_error(carol.http.get(f"/v1/orgs/{name}"), 403, "PermissionDeniedError")
    assert_error(alice.http.delete(f"/v1/orgs/{name}/members/{alice.name}"), 409, "ConflictError")
    removed = alice.http.delete(f"/v1/orgs/{name}/members/{bob.name}")
    assert [m["user"] for m in removed.json()["members"]] == [alice.name]
    assert_error(alice.http.get(f"/v1/orgs/{unique('none')}"), 404, "ObjectNotFoundError")


def test_a_token_deleted_behind_dens_back_stops_working_within_the_cache_ttl(den: DenServer) -> None:
    alice = den.user("alice")
    assert alice.http.get("/v1/me").status_code == 200  # now cached
    digest = hashlib.sha256(alice.token.encode()).hexdigest()
    with den.database.engine.begin() as conn:  # as another Den process on the same database would
        conn.execute(text("DELETE FROM tokens WHERE token_hash = :digest"), {"digest": digest})
    deadline = time.monotonic() + TOKEN_CACHE_TTL_S + 5
    while alice.http.get("/v1/me").status_code == 200:
        assert time.monotonic() < deadline, "a deleted token kept working past the cache TTL"
        time.sleep(0.2)
    assert_error(alice.http.get("/v1/me"), 401, "AuthenticationError")


def test_a_revoked_token_is_not_cached_again_by_a_request_that_raced_the_revocation() -> None:
    cache = TokenCache(ttl_s=60)
    account = Account(1, "alice", None)
    cache.put("digest", account, 7)
    assert cache.get("digest") == (account, 7)
    cache.discard("digest")
    cache.put("digest", account, 7)  # a request that read the token row before the revocation committed
    assert cache.get("digest") is None
