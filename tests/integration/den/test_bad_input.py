"""Bad input gets a clean, typed 4xx and stores nothing: malformed addresses, bad JSON, oversize configs,
SQL-looking names, unknown tokens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.den.conftest import DenServer, DenUser, assert_error, put

MIB = 1 << 20
# Path after /v1/resources, as sent (percent-escapes reach Den decoded).
MALFORMED = {
    "home": "/~/x",
    "tilde part": "/alice/~x",
    "builtin": "/%5Erh-cpu",
    "at": "/@/x",
    "dot dot": "/alice/%2E%2E/x",
    "dot dot inside": "/alice/a..b",
    "single dot": "/alice/%2E/x",
    "empty part": "/alice//x",
    "trailing slash": "/alice/x/",
    "backslash": "/alice/a%5Cb",
    "nul": "/alice/a%00b",
    "newline": "/alice/a%0Ab",
    "space": "/alice/a%20b",
    "non ascii": "/alice/caf%C3%A9",
    "owner only": "/alice",
    "empty": "/",
    "too long": "/alice/" + "/".join(["abcdefghij"] * 110),
    "sql in name": "/alice/x%27%3B%20DROP%20TABLE%20users%3B--",
    "sql as owner": "/x%27%3BDROP%20TABLE%20users%3B--/y",
    "quote": '/alice/a%22b',
}


@pytest.fixture
def alice(den: DenServer) -> DenUser:
    return den.user("alice")


@pytest.fixture
def nothing_stored(den: DenServer, alice: DenUser) -> Iterator[None]:
    """Asserts that the test added no resource, version or audit entry."""
    tables = ("resources", "resource_versions", "audit_log", "shares", "users")
    before = {table: den.count(table) for table in tables}
    yield
    assert {table: den.count(table) for table in tables} == before


@pytest.mark.parametrize("path", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.usefixtures("nothing_stored")
def test_malformed_addresses_are_400(alice: DenUser, path: str) -> None:
    path = path.replace("/alice", f"/{alice.name}", 1)
    responses = [
        alice.http.put(f"/v1/resources{path}", json={"config": {"resource_type": "function"}}),
        alice.http.get(f"/v1/resources{path}"),
    ]
    if path != f"/{alice.name}":  # a whole folder, /owner, may be shared
        responses.append(alice.http.put(f"/v1/shares{path}", json={"users": [alice.name]}))
    for response in responses:
        message = assert_error(response, 400, "InvalidNameError")
        assert message.startswith("Invalid")


def test_sql_looking_names_leave_the_users_table_alone(den: DenServer, alice: DenUser) -> None:
    users = den.count("users")
    response = alice.http.put(f"/v1/resources/{alice.name}/x'; DROP TABLE users;--", json={"config": {}})
    assert_error(response, 400, "InvalidNameError")
    assert den.count("users") == users
    unknown = alice.http.put(f"/v1/shares/{alice.name}/x", json={"users": ["bob' OR '1'='1"]})
    assert_error(unknown, 404, "ObjectNotFoundError")
    assert alice.http.get("/v1/me").status_code == 200


def test_sql_looking_config_values_are_just_data(alice: DenUser) -> None:
    config = {"resource_type": "function", "name": "x'; DROP TABLE users;--", "nul": "a\x00b", "uni": "é\u2603"}
    assert put(alice, f"/{alice.name}/odd", config).status_code == 200
    assert alice.http.get(f"/v1/resources/{alice.name}/odd").json()["config"] == config


@pytest.mark.usefixtures("nothing_stored")
@pytest.mark.parametrize(
    ("body", "status", "type_name"),
    [
        (b'{"config": ', 400, "BadRequestError"),
        (b"not json at all", 400, "BadRequestError"),
        (b'{"config": {"a": NaN}}', 400, "BadRequestError"),
        (b'{"config": {"a": Infinity}}', 400, "BadRequestError"),
        (b"[1, 2]", 422, "ValidationError"),
        (b'{"config": [1, 2]}', 422, "ValidationError"),
        (b'{"config": "text"}', 422, "ValidationError"),
        (b"{}", 422, "ValidationError"),
        (b"", 422, "ValidationError"),
        (b'{"config": {}, "extra": 1}', 422, "ValidationError"),
        (b'{"config": {"resource_type": 5}}', 400, "BadRequestError"),
        (b'{"config": {"resource_type": "' + b"t" * 300 + b'"}}', 400, "BadRequestError"),
    ],
    ids=["truncated", "not-json", "nan", "infinity", "list-body", "list-config", "string-config", "no-config",
         "empty-body", "extra-field", "type-not-string", "type-too-long"],
)
def test_bad_bodies_are_clean_4xx(alice: DenUser, body: bytes, status: int, type_name: str) -> None:
    response = alice.http.put(f"/v1/resources/{alice.name}/x", content=body,
                              headers={"content-type": "application/json"})
    assert_error(response, status, type_name)


@pytest.mark.usefixtures("nothing_stored")
def test_oversize_configs_are_413(alice: DenUser) -> None:
    just_over = {"resource_type": "blob", "data": "x" * MIB}
    message = assert_error(put(alice, f"/{alice.name}/big", just_over), 413, "PayloadTooLargeError")
    assert "1,048,576" in message
    huge = alice.http.put(f"/v1/resources/{alice.name}/big", content=b"x" * (3 * MIB),
                          headers={"content-type": "application/json"})
    assert_error(huge, 413, "PayloadTooLargeError")

    def chunks() -> Iterator[bytes]:
        yield b'{"config": {"data": "'
        for _ in range(3):
            yield b"x" * MIB
        yield b'"}}'

    streamed = alice.http.put(f"/v1/resources/{alice.name}/big", content=chunks(),
                              headers={"content-type": "application/json"})
    assert_error(streamed, 413, "PayloadTooLargeError")


def test_a_config_just_under_the_cap_is_accepted(alice: DenUser) -> None:
    config = {"resource_type": "blob", "data": "x" * (MIB - 100)}
    assert put(alice, f"/{alice.name}/almost", config).status_code == 200


@pytest.mark.usefixtures("nothing_stored")
def test_unknown_tokens_store_nothing(den: DenServer, alice: DenUser) -> None:
    stranger = den.client("rh_not-a-real-token")
    saved = stranger.put(f"/v1/resources/{alice.name}/x", json={"config": {}})
    assert_error(saved, 401, "AuthenticationError")
    assert_error(stranger.put("/v1/defaults", json={"defaults": {"a": 1}}), 401, "AuthenticationError")


@pytest.mark.usefixtures("nothing_stored")
def test_bad_parameters_are_422(alice: DenUser) -> None:
    address = f"/v1/resources/{alice.name}/x"
    assert_error(alice.http.get(address, params={"version": "abc"}), 422, "ValidationError")
    assert_error(alice.http.get(address, params={"version": 0}), 422, "ValidationError")
    assert_error(alice.http.get(address, params={"version": 10**30}), 422, "ValidationError")
    share = alice.http.put(f"/v1/shares/{alice.name}/x", json={"users": [alice.name], "access_level": "admin"})
    assert_error(share, 422, "ValidationError")
    assert_error(alice.http.put(f"/v1/shares/{alice.name}/x", json={"users": []}), 422, "ValidationError")


def test_unknown_routes_and_methods_are_typed_errors(alice: DenUser) -> None:
    assert_error(alice.http.get("/v1/nothing"), 404, "NotFoundError")
    assert_error(alice.http.post(f"/v1/resources/{alice.name}/x", json={}), 405, "MethodNotAllowedError")


# Requests an unauthenticated caller might send with a malformed body or parameters: each must be refused for
# the missing or unknown token, before Den says anything about what a well-formed request looks like.
MALFORMED_REQUESTS = {
    "body not json": ("PUT", "/v1/resources/alice/x", b"not json at all"),
    "body truncated": ("PUT", "/v1/resources/alice/x", b'{"config": '),
    "wrong field": ("PUT", "/v1/resources/alice/x", b'{"wrong": 1}'),
    "list body": ("PUT", "/v1/defaults", b"[1, 2]"),
    "org without name": ("POST", "/v1/orgs", b"{}"),
    "secret without values": ("PUT", "/v1/secrets/alice/aws", b'{"provider": "aws"}'),
    "bad share level": ("PUT", "/v1/shares/alice/x", b'{"users": ["bob"], "access_level": "owner"}'),
    "bad query": ("GET", "/v1/audit?limit=0&since=yesterday", b""),
    "bad version": ("GET", "/v1/resources/alice/x?version=abc", b""),
}


@pytest.mark.parametrize("token", [None, "rh_not-a-real-token"], ids=["no-token", "unknown-token"])
@pytest.mark.parametrize(("method", "path", "body"), MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
@pytest.mark.usefixtures("nothing_stored")
def test_unauthenticated_malformed_requests_get_401_and_no_schema(den: DenServer, token: str | None, method: str,
                                                                  path: str, body: bytes) -> None:
    response = den.client(token).request(method, path, content=body, headers={"content-type": "application/json"})
    message = assert_error(response, 401, "AuthenticationError")
    assert "details" not in response.json()["error"]
    assert "token" in message and not any(word in message for word in ("config", "field", "JSON", "limit"))


# JSON can spell text that is not Unicode: a lone surrogate, escaped or as raw (CESU-8) bytes. Stored, it
# could never be sent back as UTF-8, so every write of it is refused, wherever it sits in the body.
LONE_SURROGATES = {
    "config value": ("/v1/resources/{me}/s", b'{"config": {"a": "\\ud800"}}'),
    "config key": ("/v1/resources/{me}/s", b'{"config": {"\\udfff": 1}}'),
    "nested in a list": ("/v1/resources/{me}/s", b'{"config": {"a": [{"b": ["ok", "x\\udc00y"]}]}}'),
    "nested key": ("/v1/resources/{me}/s", b'{"config": {"a": {"k\\ud800": 1}}}'),
    "high then high": ("/v1/resources/{me}/s", b'{"config": {"a": "\\ud83d\\ud83d"}}'),
    "raw bytes": ("/v1/resources/{me}/s", b'{"config": {"a": "\xed\xa0\x80"}}'),
    "defaults": ("/v1/defaults", b'{"defaults": {"a": {"b": "\\ud83d"}}}'),
    "secret values": ("/v1/secrets/{me}/s", b'{"provider": "custom", "values": {"k": ["\\ud800"]}}'),
    "secret key": ("/v1/secrets/{me}/s", b'{"provider": "custom", "values": {"\\ud800": "v"}}'),
}


@pytest.mark.parametrize(("path", "body"), LONE_SURROGATES.values(), ids=LONE_SURROGATES.keys())
@pytest.mark.usefixtures("nothing_stored")
def test_lone_surrogates_are_refused_before_anything_is_written(den: DenServer, alice: DenUser, path: str,
                                                                body: bytes) -> None:
    stored = {table: den.count(table) for table in ("user_defaults", "secrets")}
    response = alice.http.put(path.format(me=alice.name), content=body, headers={"content-type": "application/json"})
    message = assert_error(response, 400, "BadRequestError")
    assert "surrogate" in message and message.isascii()
    assert {table: den.count(table) for table in stored} == stored
    assert alice.http.get("/v1/defaults").status_code == 200


@pytest.mark.usefixtures("nothing_stored")
def test_a_lone_surrogate_in_an_unknown_field_name_is_a_clean_422(alice: DenUser) -> None:
    response = alice.http.put(f"/v1/resources/{alice.name}/s", content=b'{"config": {}, "\\ud800": 1}',
                              headers={"content-type": "application/json"})
    assert_error(response, 422, "ValidationError")
    assert response.json()["error"]["details"][0]["loc"][0] == "body"


def test_escaped_surrogate_pairs_are_ordinary_text(alice: DenUser) -> None:
    body = b'{"config": {"smile": "\\ud83d\\ude00", "\\ud83d\\ude00": 1}}'
    saved = alice.http.put(f"/v1/resources/{alice.name}/emoji", content=body,
                           headers={"content-type": "application/json"})
    assert saved.status_code == 200, saved.text
    config = alice.http.get(f"/v1/resources/{alice.name}/emoji").json()["config"]
    assert config == {"smile": "\U0001f600", "\U0001f600": 1}


@pytest.mark.usefixtures("nothing_stored")
def test_deeply_nested_json_is_refused_before_anything_is_written(den: DenServer, alice: DenUser) -> None:
    stored = den.count("user_defaults")
    for depth in (101, 500, 900, 930, 960):  # deep enough to exhaust a JSON encoder's recursion further down
        nested = b"[" * depth + b"]" * depth
        for path, body in [(f"/v1/resources/{alice.name}/deep", b'{"config": {"a": ' + nested + b"}}"),
                           ("/v1/defaults", b'{"defaults": {"a": ' + nested + b"}}")]:
            response = alice.http.put(path, content=body, headers={"content-type": "application/json"})
            assert_error(response, 400, "BadRequestError")
    assert den.count("user_defaults") == stored
