"""Secrets in Den: only owners (and their orgs' members) reach them, and no value is ever stored, logged,
audited or echoed in plaintext."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, inspect, select, text

from runhouse.den import auth
from runhouse.den.crypto import KEY_ENV, SecretBox
from runhouse.den.db import MIGRATIONS, SCHEMA_VERSION, AuditEntry, Database, SchemaVersion, utcnow
from runhouse.errors import ConfigError
from tests.conftest import free_port
from tests.integration.den.conftest import DenProcess, DenServer, DenUser, assert_error

VALUE = "sk-live-4f9c2b7e1d8a6035"  # the plaintext that must never show up anywhere but a read's body
VALUES = {"access_key": "AKIA-visible-in-body-only", "secret_key": VALUE}


def _put(user: DenUser, owner: str, name: str = "aws", provider: str = "aws") -> httpx.Response:
    return user.http.put(f"/v1/secrets/{owner}/{name}", json={"provider": provider, "values": VALUES})


def test_owner_stores_reads_lists_and_deletes(den: DenServer) -> None:
    alice = den.user("alice")
    assert _put(alice, alice.name).status_code == 200
    got = alice.http.get(f"/v1/secrets/{alice.name}/aws").json()
    assert got["values"] == VALUES and got["provider"] == "aws" and got["updated_by"] == alice.name
    listing = alice.http.get(f"/v1/secrets/{alice.name}").json()
    assert [(s["name"], s["provider"]) for s in listing["secrets"]] == [("aws", "aws")]
    assert VALUE not in str(listing)
    assert alice.http.delete(f"/v1/secrets/{alice.name}/aws").status_code == 200
    assert_error(alice.http.get(f"/v1/secrets/{alice.name}/aws"), 404, "ObjectNotFoundError")


def test_only_the_owner_and_org_members_reach_secrets(den: DenServer) -> None:
    alice, bob, stranger = den.user("alice"), den.user("bob"), den.user("eve")
    org = den.org({alice.name: "admin", bob.name: "member"})
    _put(alice, alice.name)
    assert _put(bob, org).status_code == 200
    assert alice.http.get(f"/v1/secrets/{org}/aws").json()["values"] == VALUES  # org members share
    for path in (f"/v1/secrets/{alice.name}/aws", f"/v1/secrets/{alice.name}/missing",
                 f"/v1/secrets/{alice.name}", f"/v1/secrets/{org}/aws"):
        assert_error(stranger.http.get(path), 403, "PermissionDeniedError")
    assert_error(bob.http.get(f"/v1/secrets/{alice.name}/aws"), 403, "PermissionDeniedError")
    assert_error(_put(stranger, alice.name), 403, "PermissionDeniedError")
    assert_error(stranger.http.delete(f"/v1/secrets/{alice.name}/aws"), 403, "PermissionDeniedError")
    assert_error(den.client().get(f"/v1/secrets/{alice.name}/aws"), 401, "AuthenticationError")
    assert_error(den.client("rh_unknown").get(f"/v1/secrets/{alice.name}/aws"), 401, "AuthenticationError")
    assert alice.http.get(f"/v1/secrets/{alice.name}/aws").json()["values"] == VALUES  # nothing changed


def test_bad_secret_input_is_a_clean_4xx_that_echoes_no_value(den: DenServer) -> None:
    alice = den.user("alice")
    for name, body in [
        ("a..b", {"provider": "aws", "values": VALUES}),
        ("aws", {"provider": "no spaces", "values": VALUES}),
        ("aws", {"provider": "aws", "values": {}}),
        ("aws", {"provider": "aws", "values": {"k": VALUE * 100_000}}),
        ("aws", {"provider": "aws", "values": VALUE}),
    ]:
        response = alice.http.put(f"/v1/secrets/{alice.name}/{name}", json=body)
        assert 400 <= response.status_code < 500, response.text
        assert VALUE not in response.text
    assert den.count("secrets", owner=alice.name) == 0


def test_the_database_holds_no_plaintext(den: DenServer, tmp_path: Path) -> None:
    alice = den.user("alice")
    _put(alice, alice.name)
    alice.http.get(f"/v1/secrets/{alice.name}/aws")
    if not den.database.is_sqlite:
        pytest.skip("the file check reads SQLite's files; PostgreSQL rows are checked below")
    files = [Path(str(den.database.engine.url.database) + suffix) for suffix in ("", "-wal")]
    data = b"".join(path.read_bytes() for path in files if path.exists())
    assert b"aws" in data and VALUE.encode() not in data and b"visible-in-body-only" not in data


def test_stored_rows_are_ciphertext_and_audit_entries_name_no_value(den: DenServer) -> None:
    alice = den.user("alice")
    _put(alice, alice.name)
    alice.http.get(f"/v1/secrets/{alice.name}/aws")
    den.database.audit.flush()
    with den.database.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT ciphertext FROM secrets").all()
        audit = conn.exec_driver_sql("SELECT action, detail FROM audit_log").all()
    assert rows and all(VALUE not in row[0] for row in rows)
    secret_entries = [(action, detail) for action, detail in audit if action.startswith("secret_")]
    assert {action for action, _ in secret_entries} >= {"secret_put", "secret_read"}
    assert VALUE not in str(audit)


def test_values_never_reach_the_logs(den: DenServer, caplog: pytest.LogCaptureFixture) -> None:
    alice = den.user("alice")
    with caplog.at_level(logging.DEBUG):
        _put(alice, alice.name)
        alice.http.get(f"/v1/secrets/{alice.name}/aws")
        alice.http.put(f"/v1/secrets/{alice.name}/x", json={"provider": "bad provider", "values": VALUES})
    assert VALUE not in caplog.text


def test_den_serve_makes_its_key_and_logs_no_value(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "RH_CONFIG_DIR": str(tmp_path / "rh")}
    env.pop(KEY_ENV, None)
    log = tmp_path / "den.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "runhouse.cli", "den", "serve", "--port", str(port),
                                    "--access-log"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        token = subprocess.run([sys.executable, "-m", "runhouse.cli", "den", "user", "add", "kim"], env=env,
                               capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"})
        assert client.put("/v1/secrets/kim/hf", json={"provider": "huggingface", "values": {"token": VALUE}}
                          ).status_code == 200
        assert client.get("/v1/secrets/kim/hf").json()["values"] == {"token": VALUE}
    finally:
        process.terminate()
        process.wait(timeout=15)
    key = tmp_path / "rh" / "den" / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "/v1/secrets/kim/hf" in log.read_text() and VALUE not in log.read_text() and token not in log.read_text()
    database = tmp_path / "rh" / "den" / "den.sqlite"
    data = b"".join(p.read_bytes() for p in database.parent.glob("den.sqlite*"))
    assert VALUE.encode() not in data


def test_the_key_comes_from_the_environment_and_a_wrong_key_is_refused(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "not-a-key")
    with pytest.raises(ConfigError, match="not a Fernet key"):
        SecretBox.load()
    monkeypatch.delenv(KEY_ENV)
    sealed = SecretBox.load(tmp_path / "one.key").seal(VALUES)
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        SecretBox.load(tmp_path / "two.key").open(sealed)
    (tmp_path / "one.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        SecretBox.load(tmp_path / "one.key")


def test_a_version_1_database_gains_the_secrets_table(tmp_path: Path) -> None:
    with Database(f"sqlite:///{tmp_path / 'old.sqlite'}") as database:
        with database.engine.begin() as conn:  # as Den of schema version 1 left it
            SchemaVersion.__table__.create(conn)  # type: ignore[attr-defined]
            MIGRATIONS[0].apply(conn)
            conn.execute(SchemaVersion.__table__.insert().values(  # type: ignore[attr-defined]
                version=1, description=MIGRATIONS[0].description))
            token = auth.new_token()  # a user and token, as Den of version 1 added them
            user_id = conn.execute(text("INSERT INTO users (name, created_at) VALUES ('old', :now) RETURNING id"),
                                   {"now": utcnow()}).scalar_one()
            conn.execute(text("INSERT INTO tokens (user_id, token_hash, created_at) VALUES (:user, :hash, :now)"),
                         {"user": user_id, "hash": auth.hash_token(token), "now": utcnow()})
        assert "secrets" not in inspect(database.engine).get_table_names()
        assert database.migrate() == SCHEMA_VERSION
        assert "secrets" in inspect(database.engine).get_table_names()
        assert database.run(lambda session: auth.authenticate(session, token).name) == "old"


def test_a_secret_read_is_in_the_audit_log_before_its_value_is_returned(database_url: str, tmp_path: Path) -> None:
    """Den killed outright right after answering a read still has the read in its log."""
    with Database(database_url) as database:
        database.migrate()
        token = database.run(lambda session: auth.add_user(session, "kim"))
    den = DenProcess(database_url, tmp_path).start()
    try:
        client = httpx.Client(base_url=den.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert client.put("/v1/secrets/kim/aws", json={"provider": "aws", "values": VALUES}).status_code == 200
        for _ in range(3):
            assert client.get("/v1/secrets/kim/aws").json()["values"] == VALUES
        den.kill()
    finally:
        den.stop()
    with Database(database_url) as database, database.engine.connect() as conn:
        reads = conn.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "secret_read"))
    assert reads == 3
