"""The JSON of a folder listing (``GET /v1/folders/...``), byte for byte, and what it hides from a reader who
may not read the whole folder: the listing is made in SQL and encoded by a fast path, so its shape, its
times and its order are pinned here against the documented schema and the other routes' answers."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import inspect, update

from runhouse.den.api.schemas import FolderListing
from runhouse.den.db import Resource
from tests.integration.den.conftest import DenServer, DenUser, put


def _updated_at(user: DenUser, address: str) -> str:
    """The resource's ``updated_at`` as ``GET /v1/resources`` formats it (the reference)."""
    response = user.http.get(f"/v1/resources{address}")
    assert response.status_code == 200, response.text
    return str(response.json()["updated_at"])


def _listing(user: DenUser, folder: str) -> tuple[bytes, dict[str, Any]]:
    response = user.http.get(f"/v1/folders{folder}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    FolderListing.model_validate_json(response.content)
    return response.content, response.json()


def _entry(folder: str, name: str, kind: str, resource_type: str, updated_at: str) -> dict[str, str]:
    return {"name": name, "address": f"{folder}/{name}", "kind": kind, "resource_type": resource_type,
            "updated_at": updated_at}


def _compact(value: Any) -> bytes:
    """What Starlette's JSONResponse sends for ``value``: compact, UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _set_updated_at(den: DenServer, address: str, moment: datetime) -> None:
    den.database.run(lambda session: session.execute(
        update(Resource).where(Resource.address == address).values(updated_at=moment)))


def test_the_listing_is_byte_for_byte_the_documented_json(den: DenServer) -> None:
    alice = den.user("alice")
    root = f"/{alice.name}/lib"
    # Names whose order differs from their addresses' ('+', '-' and '.' sort before '/'), a resource beside a
    # folder of the same name, and a resource type that JSON must escape.
    for name in ("zeta", "a-b", "a@b", "a/inner", "a", "a.b", "a+b", "sub/deeper/x"):
        assert put(alice, f"{root}/{name}").status_code == 200
    odd_type = 'table "v2" \\ <b>'
    assert put(alice, f"{root}/model", {"resource_type": odd_type}).status_code == 200
    # Times as stored: with microseconds, whole seconds (isoformat drops the fraction), and the folder "a"
    # taking the time of its latest resource, which is not its first.
    _set_updated_at(den, f"{root}/zeta", datetime(2026, 1, 2, 3, 4, 5))
    _set_updated_at(den, f"{root}/a/inner", datetime(2026, 5, 6, 7, 8, 9, 120000))
    _set_updated_at(den, f"{root}/sub/deeper/x", datetime(2025, 12, 31, 23, 59, 59, 999999))
    _set_updated_at(den, f"{root}/a", datetime(2024, 1, 1))

    content, listing = _listing(alice, root)

    times = {name: _updated_at(alice, f"{root}/{name}")
             for name in ("zeta", "a-b", "a@b", "a/inner", "a", "a.b", "a+b", "sub/deeper/x", "model")}
    assert times["zeta"] == "2026-01-02T03:04:05+00:00" and times["a/inner"] == "2026-05-06T07:08:09.120000+00:00"
    expected = {"folder": root, "entries": [
        _entry(root, "a", "folder", "folder", times["a/inner"]),
        _entry(root, "a", "resource", "function", times["a"]),
        *(_entry(root, name, "resource", "function", times[name]) for name in ("a+b", "a-b", "a.b", "a@b")),
        _entry(root, "model", "resource", odd_type, times["model"]),
        _entry(root, "sub", "folder", "folder", times["sub/deeper/x"]),
        _entry(root, "zeta", "resource", "function", times["zeta"]),
    ]}
    assert listing == expected
    assert content == _compact(expected)
    assert list(listing["entries"][0]) == ["name", "address", "kind", "resource_type", "updated_at"]


def test_a_folders_time_is_its_latest_resources_not_its_first(den: DenServer) -> None:
    alice = den.user("alice")
    root = f"/{alice.name}/times"
    for name, moment in (("f/old", datetime(2026, 1, 1)), ("f/new", datetime(2026, 1, 1, 0, 0, 0, 1)),
                         ("f/deep/older", datetime(2025, 1, 1))):
        put(alice, f"{root}/{name}")
        _set_updated_at(den, f"{root}/{name}", moment)
    assert _listing(alice, root)[1]["entries"] == [
        _entry(root, "f", "folder", "folder", "2026-01-01T00:00:00.000001+00:00")]


def test_a_reader_without_the_whole_folder_sees_only_what_they_may_read(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    root = f"/{alice.name}/proj"
    for name in ("secret", "Shared", "open", "deep/inner/y", "deep/hidden", "deeper/z", "s_cret/q"):
        assert put(alice, f"{root}/{name}").status_code == 200
    assert alice.http.patch(f"/v1/resources{root}/open", json={"public": True}).status_code == 200
    # Shares that must not open anything else: a case variant, a name with a LIKE wildcard, a folder name's
    # prefix ("dee" is not "deeper"), a share elsewhere; and one that does: a folder below the listed one.
    for address in (f"{root}/shared", f"{root}/s_cret", f"{root}/dee", f"/{alice.name}/elsewhere",
                    f"{root}/deep/inner"):
        response = alice.http.put(f"/v1/shares{address}", json={"users": [bob.name]})
        assert response.status_code == 200, response.text
    _set_updated_at(den, f"{root}/deep/inner/y", datetime(2026, 3, 3))
    _set_updated_at(den, f"{root}/deep/hidden", datetime(2026, 4, 4))  # newer, but bob may not read it

    content, listing = _listing(bob, root)

    assert listing == {"folder": root, "entries": [
        _entry(root, "deep", "folder", "folder", "2026-03-03T00:00:00+00:00"),
        _entry(root, "open", "resource", "function", _updated_at(alice, f"{root}/open")),
        _entry(root, "s_cret", "folder", "folder", _updated_at(alice, f"{root}/s_cret/q")),
    ]}
    assert b"secret" not in content and b"Shared" not in content and b"hidden" not in content
    assert _listing(bob, f"{root}/deep")[1]["entries"] == [
        _entry(f"{root}/deep", "inner", "folder", "folder", "2026-03-03T00:00:00+00:00")]
    # The owner's name in another case is another (empty) namespace, for bob and for alice alike.
    for user in (bob, alice):
        assert _listing(user, f"/{alice.name.upper()}/proj")[1] == {"folder": f"/{alice.name.upper()}/proj",
                                                                   "entries": []}
    # The owner sees all of it.
    assert [e["name"] for e in _listing(alice, root)[1]["entries"]] == [
        "Shared", "deep", "deeper", "open", "s_cret", "secret"]


def test_postgresql_has_an_index_for_address_prefixes(den: DenServer) -> None:
    with den.database.engine.connect() as conn:
        names = {index["name"] for index in inspect(conn).get_indexes("resources")}
    assert ("ix_resources_address_prefix" in names) == (den.database.engine.dialect.name == "postgresql")
