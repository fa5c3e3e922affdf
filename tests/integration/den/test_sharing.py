"""Sharing resources and folders with users, unsharing, and the public flag."""

from __future__ import annotations

from tests.integration.den.conftest import DenServer, assert_error, put


def test_sharing_a_folder_shares_everything_under_it(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    put(alice, f"/{alice.name}/proj/a")
    put(alice, f"/{alice.name}/proj/sub/b")
    put(alice, f"/{alice.name}/other")
    alice.http.put(f"/v1/shares/{alice.name}/proj", json={"users": [bob.name], "access_level": "read"})
    assert bob.http.get(f"/v1/resources/{alice.name}/proj/a").status_code == 200
    assert bob.http.get(f"/v1/resources/{alice.name}/proj/sub/b").status_code == 200
    assert_error(bob.http.get(f"/v1/resources/{alice.name}/other"), 403, "PermissionDeniedError")
    assert_error(put(bob, f"/{alice.name}/proj/a"), 403, "PermissionDeniedError")


def test_a_write_share_on_a_folder_lets_the_user_create_under_it(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    alice.http.put(f"/v1/shares/{alice.name}/team", json={"users": [bob.name], "access_level": "write"})
    created = put(bob, f"/{alice.name}/team/new/fn")
    assert (created.status_code, created.json()["author"]) == (200, bob.name)
    assert_error(put(bob, f"/{alice.name}/private"), 403, "PermissionDeniedError")


def test_shares_list_what_applies_including_folders_above(den: DenServer) -> None:
    alice, bob, carol = den.user("alice"), den.user("bob"), den.user("carol")
    put(alice, f"/{alice.name}/proj/fn")
    alice.http.put(f"/v1/shares/{alice.name}/proj", json={"users": [bob.name], "access_level": "write"})
    alice.http.put(f"/v1/shares/{alice.name}/proj/fn", json={"users": [carol.name]})
    shares = alice.http.get(f"/v1/shares/{alice.name}/proj/fn").json()["shares"]
    assert [(s["address"], s["user"], s["access_level"], s["granted_by"]) for s in shares] == [
        (f"/{alice.name}/proj", bob.name, "write", alice.name),
        (f"/{alice.name}/proj/fn", carol.name, "read", alice.name),
    ]


def test_unshare_revokes_access(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    address = f"/{alice.name}/fn"
    put(alice, address)
    alice.http.put(f"/v1/shares{address}", json={"users": [bob.name]})
    assert bob.http.get(f"/v1/resources{address}").status_code == 200
    removed = alice.http.delete(f"/v1/shares{address}", params={"users": [bob.name]})
    assert removed.json()["shares"] == []
    assert_error(bob.http.get(f"/v1/resources{address}"), 403, "PermissionDeniedError")
    again = alice.http.delete(f"/v1/shares{address}", params={"users": [bob.name]})
    assert_error(again, 404, "ObjectNotFoundError")


def test_sharing_by_email_and_changing_the_level(den: DenServer) -> None:
    alice = den.user("alice")
    bob = den.user("bob", email="bob-share@example.com")
    address = f"/{alice.name}/fn"
    put(alice, address)
    alice.http.put(f"/v1/shares{address}", json={"users": ["bob-share@example.com"], "access_level": "read"})
    assert_error(put(bob, address), 403, "PermissionDeniedError")
    upgraded = alice.http.put(f"/v1/shares{address}", json={"users": [bob.name], "access_level": "write"})
    assert [s["access_level"] for s in upgraded.json()["shares"]] == ["write"]
    assert put(bob, address).status_code == 200


def test_sharing_with_an_unknown_user_grants_nothing(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    address = f"/{alice.name}/fn"
    put(alice, address)
    response = alice.http.put(f"/v1/shares{address}", json={"users": [bob.name, "nobody-here"]})
    assert "nobody-here" in assert_error(response, 404, "ObjectNotFoundError")
    assert alice.http.get(f"/v1/shares{address}").json()["shares"] == []
    assert_error(bob.http.get(f"/v1/resources{address}"), 403, "PermissionDeniedError")


def test_a_public_resource_is_readable_by_any_logged_in_user_only(den: DenServer) -> None:
    alice, sam = den.user("alice"), den.user("sam")
    address = f"/{alice.name}/model"
    put(alice, address)
    assert_error(sam.http.patch(f"/v1/resources{address}", json={"public": True}), 403, "PermissionDeniedError")
    assert alice.http.patch(f"/v1/resources{address}", json={"public": True}).json()["public"] is True
    assert sam.http.get(f"/v1/resources{address}").status_code == 200
    assert sam.http.get(f"/v1/history{address}").status_code == 200
    assert_error(put(sam, address), 403, "PermissionDeniedError")
    assert_error(sam.http.put(f"/v1/shares{address}", json={"users": [sam.name]}), 403, "PermissionDeniedError")
    assert_error(den.client().get(f"/v1/resources{address}"), 401, "AuthenticationError")
    alice.http.patch(f"/v1/resources{address}", json={"public": False})
    assert_error(sam.http.get(f"/v1/resources{address}"), 403, "PermissionDeniedError")


def test_deleting_a_resource_drops_its_shares(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    address = f"/{alice.name}/fn"
    put(alice, address)
    alice.http.put(f"/v1/shares{address}", json={"users": [bob.name]})
    alice.http.delete(f"/v1/resources{address}")
    put(alice, address)
    assert_error(bob.http.get(f"/v1/resources{address}"), 403, "PermissionDeniedError")
