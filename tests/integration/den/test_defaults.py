"""Per-user config defaults stored in Den, so they travel between machines."""

from __future__ import annotations

from tests.integration.den.conftest import DenServer, assert_error


def test_defaults_round_trip_and_are_per_user(den: DenServer) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    assert alice.http.get("/v1/defaults").json() == {"defaults": {}}
    defaults = {"default_autostop": 30, "default_folder": "~", "nested": {"a": [1, 2.5, None, True]}}
    assert alice.http.put("/v1/defaults", json={"defaults": defaults}).json() == {"defaults": defaults}
    assert alice.http.get("/v1/defaults").json() == {"defaults": defaults}
    assert bob.http.get("/v1/defaults").json() == {"defaults": {}}


def test_putting_defaults_replaces_them(den: DenServer) -> None:
    alice = den.user("alice")
    alice.http.put("/v1/defaults", json={"defaults": {"a": 1, "b": 2}})
    alice.http.put("/v1/defaults", json={"defaults": {"c": 3}})
    assert alice.http.get("/v1/defaults").json() == {"defaults": {"c": 3}}


def test_bad_defaults_are_rejected_and_keep_the_old_ones(den: DenServer) -> None:
    alice = den.user("alice")
    alice.http.put("/v1/defaults", json={"defaults": {"a": 1}})
    huge = {"defaults": {"blob": "x" * (1 << 20)}}
    assert_error(alice.http.put("/v1/defaults", json=huge), 413, "PayloadTooLargeError")
    not_a_dict = alice.http.put("/v1/defaults", json={"defaults": [1, 2]})
    assert_error(not_a_dict, 422, "ValidationError")
    nan = alice.http.put("/v1/defaults", content=b'{"defaults": {"a": NaN}}',
                         headers={"content-type": "application/json"})
    assert_error(nan, 400, "BadRequestError")
    assert alice.http.get("/v1/defaults").json() == {"defaults": {"a": 1}}
    assert_error(den.client().get("/v1/defaults"), 401, "AuthenticationError")
