"""`runhouse den user add | user token | org add` talk to the running Den with its admin token; `den serve
--detach` and `den stop` run it in the background. Every test runs the real CLI in a process of its own, with
a runhouse folder (RH_CONFIG_DIR) of its own, against a Den it started with `den serve --detach`."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from runhouse.errors import AuthenticationError
from runhouse.rns.den_client import DenClient
from tests.conftest import free_port
from tests.integration.den.conftest import BACKENDS, PostgresServer, assert_error

CLI_TIMEOUT_S = 60


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Folder:
    """A runhouse folder of its own, and the CLI run with it."""

    path: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("RH_DEN_ADMIN_TOKEN", "RH_DEN_DB", "RH_DEN_SECRET_KEY", "RH_TOKEN")}
        return {**env, "RH_CONFIG_DIR": str(self.path), **extra}

    def run(self, *args: str, **extra_env: str) -> Result:
        done = subprocess.run([sys.executable, "-m", "runhouse.cli", *args], env=self.env(**extra_env),
                              capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, **extra_env: str) -> Result:
        result = self.run(*args, **extra_env)
        assert result.code == 0, result.err
        assert "Traceback" not in result.err
        return result

    @property
    def admin_token_file(self) -> Path:
        return self.path / "den" / "admin_token"

    def record(self, port: int) -> dict[str, Any] | None:
        path = self.path / "den" / "servers" / f"{port}.json"
        return json.loads(path.read_text()) if path.exists() else None


@dataclass
class RunningDen:
    folder: Folder
    port: int
    url: str
    db: str | None


def _start(folder: Folder, port: int, db: str | None = None) -> RunningDen:
    folder.ok("den", "serve", "--detach", "--port", str(port), *(["--db", db] if db else []))
    return RunningDen(folder, port, f"http://127.0.0.1:{port}", db)


def _stop(den: RunningDen) -> None:
    """`den stop`, and if that did not end it, the process itself: a test never leaves a Den behind."""
    record = den.folder.record(den.port)
    den.folder.run("den", "stop", "--port", str(den.port))
    if record is not None and psutil.pid_exists(int(record["pid"])):
        psutil.Process(int(record["pid"])).kill()


@pytest.fixture
def folder(tmp_path: Path) -> Folder:
    return Folder(tmp_path / "rh")


@pytest.fixture(scope="module", params=BACKENDS)
def den(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDen]:
    """A Den in the background on each backend (SQLite in its runhouse folder, or PostgreSQL)."""
    db = None if request.param == "sqlite" else request.getfixturevalue("postgres_server").new_database()
    running = _start(Folder(tmp_path_factory.mktemp("admin") / "rh"), free_port(), db)
    try:
        yield running
    finally:
        _stop(running)


_names = iter(range(10_000))


def _name(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


# ----------------------------------------------------------------------------------------- the flow


def test_user_add_prints_a_token_the_running_den_accepts(den: RunningDen) -> None:
    alice = _name("alice")
    result = den.folder.ok("den", "user", "add", alice, "--email", f"{alice}@example.com")
    token = result.out.strip()
    assert token.startswith("rh_") and "\n" not in token
    assert f"Den at {den.url}" in result.err and "shown only now" in result.err
    with DenClient(den.url, token) as client:
        assert client.me()["name"] == alice
        client.put(f"/{alice}/fns/add", {"resource_type": "function", "name": "add"})
        assert client.get(f"/{alice}/fns/add")["author"] == alice


def test_user_token_issues_another_token_and_revoke_old_revokes_the_rest(den: RunningDen) -> None:
    bob = _name("bob")
    first = den.folder.ok("den", "user", "add", bob).out.strip()
    kept = den.folder.ok("den", "user", "token", bob)
    second = kept.out.strip()
    assert second != first and "older tokens still work" in kept.err
    for token in (first, second):
        with DenClient(den.url, token) as client:
            assert client.me()["name"] == bob

    revoking = den.folder.ok("den", "user", "token", bob, "--revoke-old")
    third = revoking.out.strip()
    assert "2 older token(s) revoked" in revoking.err
    for token in (first, second):
        with DenClient(den.url, token) as client, pytest.raises(AuthenticationError):
            client.me()
    with DenClient(den.url, third) as client:
        assert client.me()["name"] == bob


def test_org_add_creates_an_org_then_adds_members_and_admins(den: RunningDen) -> None:
    alice, bob, org = _name("alice"), _name("bob"), _name("org")
    tokens = {user: den.folder.ok("den", "user", "add", user).out.strip() for user in (alice, bob)}
    created = den.folder.ok("den", "org", "add", org, "--admin", alice)
    assert f"org {org} created in Den at {den.url}; members: {alice} (admin)" in created.err
    updated = den.folder.ok("den", "org", "add", org, "--member", bob)
    assert f"org {org} updated" in updated.err and f"{bob} (member)" in updated.err
    with DenClient(den.url, tokens[bob]) as client:
        assert client.me()["orgs"] == [{"name": org, "role": "member"}]
        client.put(f"/{org}/shared", {"resource_type": "blob"})  # members write in the org's folder

    missing = den.folder.run("den", "org", "add", _name("org"), "--member", "nobody-at-all")
    assert missing.code == 1 and "nobody-at-all" in missing.err and "Traceback" not in missing.err


def test_admin_actions_are_in_the_audit_log_without_tokens(den: RunningDen) -> None:
    carol = _name("carol")
    token = den.folder.ok("den", "user", "add", carol).out.strip()
    new = den.folder.ok("den", "user", "token", carol).out.strip()
    answer = httpx.get(f"{den.url}/v1/audit", params={"prefix": f"/{carol}"},
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
    entries = [(e["user"], e["action"]) for e in answer.json()["entries"]]
    assert entries == [("(admin)", "user_token"), ("(admin)", "user_add")]
    assert token not in answer.text and new not in answer.text


def test_admin_routes_refuse_user_tokens_with_403_and_no_token_with_401(den: RunningDen) -> None:
    dave = _name("dave")
    user_token = den.folder.ok("den", "user", "add", dave).out.strip()
    body = {"name": _name("eve")}
    as_user = {"Authorization": f"Bearer {user_token}"}
    assert "admin" in assert_error(httpx.post(f"{den.url}/v1/admin/users", json=body, headers=as_user), 403,
                                   "PermissionDeniedError")
    assert_error(httpx.put(f"{den.url}/v1/admin/orgs/x", json={"members": {dave: "admin"}}, headers=as_user), 403)
    assert_error(httpx.post(f"{den.url}/v1/admin/users/{dave}/tokens", json={}, headers=as_user), 403)
    assert_error(httpx.post(f"{den.url}/v1/admin/users", json={"nonsense": 1}, headers=as_user), 403)
    assert_error(httpx.post(f"{den.url}/v1/admin/users", json=body), 401, "AuthenticationError")
    assert_error(httpx.post(f"{den.url}/v1/admin/users", json=body, headers={"Authorization": "Bearer rh_x"}), 401)

    admin_token = den.folder.admin_token_file.read_text().strip()
    message = assert_error(httpx.get(f"{den.url}/v1/me", headers={"Authorization": f"Bearer {admin_token}"}), 401)
    assert "admin token" in message  # the admin is no user: it is told so, not just "unknown token"
    bad_name = httpx.post(f"{den.url}/v1/admin/users", json={"name": "../x"},
                          headers={"Authorization": f"Bearer {admin_token}"})
    assert_error(bad_name, 400, "InvalidNameError")


def test_direct_database_mode_says_which_database_it_changes(tmp_path: Path, folder: Folder) -> None:
    url = f"sqlite:///{tmp_path / 'other.sqlite'}"
    result = folder.ok("den", "user", "add", "zoe", "--db", url)
    assert f"database {url} (directly, not through a running Den)" in result.err
    refused = folder.run("den", "user", "add", "zed", "--db", url, "--url", "http://127.0.0.1:1")
    assert refused.code == 1 and "--db changes a database directly" in refused.err


def test_direct_database_mode_hides_the_password(folder: Folder, postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database().replace("@", ":hunter2@", 1)  # trusted: the password is not checked
    result = folder.ok("den", "user", "add", "zoe", "--db", url)
    assert "hunter2" not in result.err and "***@127.0.0.1" in result.err


# ------------------------------------------------------------------------------- the admin token


def test_the_admin_token_file_is_private_and_kept_across_restarts(folder: Folder) -> None:
    port = free_port()
    den = _start(folder, port)
    try:
        token_file = folder.admin_token_file
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        before = token_file.read_text()
        folder.ok("den", "stop", "--port", str(port))
        den = _start(folder, port)
        assert token_file.read_text() == before
        folder.ok("den", "user", "add", "kim")  # the same file still opens the restarted Den
    finally:
        _stop(den)


def test_an_admin_token_from_elsewhere_is_used_or_refused_clearly(den: RunningDen, tmp_path: Path,
                                                                  folder: Folder) -> None:
    token = den.folder.admin_token_file.read_text().strip()
    # Another runhouse folder: the Den is named by --url, its token comes from the environment or a file.
    assert folder.ok("den", "user", "add", _name("env"), "--url", den.url, RH_DEN_ADMIN_TOKEN=token).out
    copy = tmp_path / "copied_token"
    copy.write_text(token)
    copy.chmod(0o600)
    assert folder.ok("den", "user", "add", _name("file"), "--url", den.url, "--admin-token-file", str(copy)).out

    wrong = tmp_path / "wrong_token"
    wrong.write_text("rh_admin_not-this-dens")
    wrong.chmod(0o600)
    refused = folder.run("den", "user", "add", _name("x"), "--url", den.url, "--admin-token-file", str(wrong))
    assert refused.code == 1 and refused.out == ""
    assert f"Den at {den.url} refused the admin token from {wrong}" in refused.err
    copy.chmod(0o644)
    loose = folder.run("den", "user", "add", _name("x"), "--url", den.url, "--admin-token-file", str(copy))
    assert loose.code == 1 and "chmod 600" in loose.err
    none = folder.run("den", "user", "add", _name("x"), "--url", den.url)  # this folder never ran a Den
    assert none.code == 1 and f"Den at {den.url} answers, but there is no admin token at" in none.err
    assert "--admin-token-file" in none.err


# ---------------------------------------------------------------------------- Den down, detach, stop


def test_admin_commands_say_which_url_they_tried_when_den_is_down(folder: Folder) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["user", "add", "amy"], ["user", "token", "amy"], ["org", "add", "acme", "--member", "amy"]):
        result = folder.run("den", *args, "--url", url)
        assert result.code == 1 and result.out == ""
        assert f"no Den answers at {url}" in result.err and "runhouse den serve --detach" in result.err
        assert "Traceback" not in result.err
    malformed = folder.run("den", "user", "add", "amy", "--url", "http://[::1")
    assert malformed.code == 1 and "no Den answers at http://[::1" in malformed.err
    default = folder.run("den", "user", "add", "amy")  # no Den of this folder runs: the default URL
    assert default.code == 1 and "http://127.0.0.1:32400" in default.err and "Traceback" not in default.err


def test_serve_detach_runs_den_in_its_own_session_and_stop_ends_it(folder: Folder) -> None:
    port = free_port()
    den = _start(folder, port)
    try:
        record = folder.record(port)
        assert record is not None and record["url"] == den.url
        pid = int(record["pid"])
        assert os.getsid(pid) == pid != os.getsid(0)  # a session of its own: the terminal may close
        assert httpx.get(f"{den.url}/health", timeout=5).status_code == 200
        log = folder.path / "den" / "servers" / f"{port}.log"
        assert stat.S_IMODE(log.stat().st_mode) == 0o600 and f"Den on {den.url}" in log.read_text()
        # The admin commands find it without --url: the record names it.
        assert folder.ok("den", "user", "add", "ann").out.startswith("rh_")

        again = folder.run("den", "serve", "--detach", "--port", str(port))
        assert again.code == 1 and f"Den already runs on port {port} (pid {pid}" in again.err
        assert "runhouse den stop" in again.err
    finally:
        stopped = folder.run("den", "stop", "--port", str(port))
        _stop(den)
    assert stopped.code == 0 and f"Den on port {port} (pid {pid}) stopped" in stopped.err
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert folder.record(port) is None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{den.url}/health", timeout=2)
    nothing = folder.ok("den", "stop")
    assert "no Den of this runhouse folder" in nothing.err and "nothing to stop" in nothing.err


def test_serve_detach_keeps_a_postgres_password_off_the_command_line(
        folder: Folder, postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database().replace("@", ":hunter2@", 1)
    den = _start(folder, free_port(), url)
    try:
        record = folder.record(den.port)
        assert record is not None and "hunter2" not in str(record["database"])
        command_line = " ".join(psutil.Process(int(record["pid"])).cmdline())
        assert "hunter2" not in command_line and "postgresql" not in command_line
        assert folder.ok("den", "user", "add", "pat").out.startswith("rh_")
    finally:
        _stop(den)


def test_serve_detach_on_a_busy_port_fails_with_the_end_of_the_log(folder: Folder) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = folder.run("den", "serve", "--detach", "--port", str(port))
    assert result.code == 1 and "Traceback" not in result.err
    assert f"Den did not start on port {port}" in result.err and "the end of its log" in result.err
    assert f"Den cannot listen on 127.0.0.1:{port}" in result.err
    assert folder.record(port) is None


def test_a_den_in_the_foreground_is_found_by_the_admin_commands_and_cleans_up_on_sigterm(folder: Folder) -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "runhouse.cli", "den", "serve", "--port", str(port)],
                               env=folder.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while folder.record(port) is None or not _answers(port):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr and process.stderr.read()
            time.sleep(0.05)
        assert folder.ok("den", "user", "add", "fay").out.startswith("rh_")
        process.terminate()  # SIGTERM, as systemd or `kill` sends it
        assert process.wait(timeout=15) == 0
        assert folder.record(port) is None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=15)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
