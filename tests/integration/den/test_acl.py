"""Who may do what to a resource: every role against every operation, each denial asserted, nothing changed."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from tests.integration.den.conftest import DenServer, DenUser, assert_error, put, unique

ROLES = ["owner", "org_member", "read_share", "write_share", "stranger", "logged_out"]
OPERATIONS = ["read", "write", "delete", "share", "history"]
ALLOWED = {
    "owner": set(OPERATIONS),
    "org_member": set(OPERATIONS),
    "write_share": set(OPERATIONS),
    "read_share": {"read", "history"},
    "stranger": set(),
    "logged_out": set(),
}


@dataclass
class World:
    alice: DenUser  # owns /alice/..., admin of the org
    olga: DenUser  # member of the org
    rita: DenUser  # gets read shares
    will: DenUser  # gets write shares
    sam: DenUser  # stranger
    target: DenUser  # whom shares are granted to in the "share" operation
    org: str
    anonymous: httpx.Client


@pytest.fixture(scope="module")
def world(den: DenServer) -> World:
    alice, olga = den.user("alice"), den.user("olga")
    org = den.org({alice.name: "admin", olga.name: "member"})
    return World(alice, olga, den.user("rita"), den.user("will"), den.user("sam"), den.user("target"), org,
                 den.client())


def _setup(world: World, role: str) -> tuple[str, httpx.Client]:
    """A fresh resource (version 1) and the client acting in ``role`` on it."""
    owner = world.org if role == "org_member" else world.alice.name
    address = f"/{owner}/{unique('m')}"
    assert put(world.alice, address, {"resource_type": "function", "v": 1}).status_code == 200
    for user, level in ((world.rita, "read"), (world.will, "write")):
        granted = world.alice.http.put(f"/v1/shares{address}", json={"users": [user.name], "access_level": level})
        assert granted.status_code == 200, granted.text
    actor = {
        "owner": world.alice.http, "org_member": world.olga.http, "read_share": world.rita.http,
        "write_share": world.will.http, "stranger": world.sam.http, "logged_out": world.anonymous,
    }[role]
    return address, actor


def _perform(world: World, client: httpx.Client, operation: str, address: str) -> httpx.Response:
    if operation == "read":
        return client.get(f"/v1/resources{address}")
    if operation == "write":
        return client.put(f"/v1/resources{address}", json={"config": {"resource_type": "function", "v": 2}})
    if operation == "delete":
        return client.delete(f"/v1/resources{address}")
    if operation == "share":
        return client.put(f"/v1/shares{address}", json={"users": [world.target.name], "access_level": "read"})
    return client.get(f"/v1/history{address}")


def _target_shares(world: World, address: str) -> list[dict]:
    shares = world.alice.http.get(f"/v1/shares{address}").json()["shares"]
    return [share for share in shares if share["user"] == world.target.name]


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("role", ROLES)
def test_access_matrix(world: World, role: str, operation: str) -> None:
    address, client = _setup(world, role)
    response = _perform(world, client, operation, address)
    current = world.alice.http.get(f"/v1/resources{address}")

    if operation in ALLOWED[role]:
        assert response.status_code == 200, response.text
        if operation == "read":
            assert response.json()["config"] == {"resource_type": "function", "v": 1}
        elif operation == "history":
            assert [v["version"] for v in response.json()["versions"]] == [1]
        elif operation == "write":
            assert current.json()["current_version"] == 2
            assert current.json()["config"]["v"] == 2
        elif operation == "delete":
            assert_error(current, 404, "ObjectNotFoundError")
        else:
            assert [s["access_level"] for s in _target_shares(world, address)] == ["read"]
        return

    if role == "logged_out":
        assert_error(response, 401, "AuthenticationError")
        assert response.headers["www-authenticate"] == "Bearer"
    else:
        message = assert_error(response, 403, "PermissionDeniedError")
        assert address in message
    # A denied request changes nothing.
    assert current.status_code == 200
    assert current.json()["current_version"] == 1
    assert current.json()["config"]["v"] == 1
    assert _target_shares(world, address) == []
