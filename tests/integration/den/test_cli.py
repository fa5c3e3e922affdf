"""`runhouse den ...`: adding users and orgs to the database, and serving it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from runhouse.cli import app
from runhouse.den.db import SCHEMA_VERSION
from tests.conftest import free_port
from tests.integration.den.conftest import DenServer, PostgresServer, assert_error

runner = CliRunner()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'den.sqlite'}"


def _den(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["den", *args])
    return result.exit_code, result.stdout, result.stderr


def test_user_add_prints_the_token_once_and_stores_only_its_hash(tmp_path: Path, sqlite_url: str) -> None:
    code, out, err = _den("user", "add", "alice", "--email", "alice@example.com", "--db", sqlite_url)
    assert code == 0, err
    token = out.strip()
    assert token.startswith("rh_") and len(token) > 40
    assert "shown only now" in err
    files = list(tmp_path.glob("den.sqlite*"))
    stored = b"".join(path.read_bytes() for path in files)
    assert token.encode() not in stored
    assert hashlib.sha256(token.encode()).hexdigest().encode() in stored

    server = DenServer(sqlite_url).start()
    try:
        assert server.client(token).get("/v1/me").json()["name"] == "alice"
    finally:
        server.stop()


def test_adding_a_taken_name_fails_without_a_token(sqlite_url: str) -> None:
    assert _den("user", "add", "alice", "--db", sqlite_url)[0] == 0
    code, out, err = _den("user", "add", "alice", "--db", sqlite_url)
    assert code == 1 and out == ""
    assert "already a user" in err
    code, _, err = _den("user", "add", "bad'; name", "--db", sqlite_url)
    assert code == 1 and "Invalid user name" in err


def test_org_add_adds_members_and_admins_or_nothing(sqlite_url: str) -> None:
    tokens = {name: _den("user", "add", name, "--db", sqlite_url)[1].strip() for name in ("alice", "bob")}
    code, _, err = _den("org", "add", "acme", "--member", "bob", "--admin", "alice", "--db", sqlite_url)
    assert code == 0, err
    code, _, err = _den("org", "add", "beta", "--member", "bob", "--member", "nobody", "--db", sqlite_url)
    assert code == 1 and "nobody" in err

    server = DenServer(sqlite_url).start()
    try:
        bob = server.client(tokens["bob"])
        assert bob.get("/v1/me").json()["orgs"] == [{"name": "acme", "role": "member"}]
        assert_error(bob.get("/v1/orgs/beta"), 404, "ObjectNotFoundError")
    finally:
        server.stop()


@pytest.fixture(params=["default-sqlite", "postgres"])
def serve_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """The --db arguments of `den serve`: none (the file in RH_CONFIG_DIR), or a postgresql:// URL."""
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        yield ["--db", server.new_database()]
    else:
        yield []


def test_serve_creates_the_schema_and_answers_until_stopped(tmp_path: Path, serve_db: list[str]) -> None:
    port = free_port()
    env = {**os.environ, "RH_CONFIG_DIR": str(tmp_path / "rh")}
    command = [sys.executable, "-m", "runhouse.cli", "den", "serve", "--port", str(port), *serve_db]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
                assert time.monotonic() < deadline, "den serve did not answer in 20 s"
                time.sleep(0.1)
        assert health.json()["schema_version"] == SCHEMA_VERSION
        key = tmp_path / "rh" / "den" / "secret.key"  # made on first start, for secrets at rest
        assert key.exists() and key.stat().st_mode & 0o777 == 0o600
        if not serve_db:
            database = tmp_path / "rh" / "den" / "den.sqlite"
            assert database.exists() and database.stat().st_mode & 0o777 == 0o600
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    assert process.returncode == 0
