"""A real Den per test module, on a free port, called over HTTP with httpx; once on SQLite, once on PostgreSQL.

PostgreSQL runs from Debian's binaries (``/usr/lib/postgresql/*/bin``) in a temporary folder on a free
loopback port, started once per session and stopped at its end; each test module gets a fresh database.
As root, PostgreSQL runs as the ``postgres`` user (it refuses to run as root).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.fernet import Fernet
from sqlalchemy import func, select

import runhouse as rh
from runhouse.config import configs
from runhouse.den import auth
from runhouse.den.app import create_app
from runhouse.den.crypto import KEY_ENV
from runhouse.den.db import Base, Database
from tests.conftest import free_port
from tests.support.postgres import PostgresServer, postgres_bin, postgres_unavailable

BACKENDS = ["sqlite", "postgres"]
START_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0
_names = itertools.count()


def unique(prefix: str = "u") -> str:
    """A name no other test uses (the server is shared by a module's tests)."""
    return f"{prefix}{next(_names)}"


def assert_error(response: httpx.Response, status: int, type_name: str | None = None) -> str:
    """Check a typed JSON error; returns its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if type_name is not None:
        assert error["type"] == type_name, error
    return error["message"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    why = postgres_unavailable()
    if why is not None:
        pytest.skip(why)
    server = PostgresServer(postgres_bin())  # type: ignore[arg-type]
    try:
        yield server.start()
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------------- Den


@dataclass
class DenUser:
    """A Den user and an HTTP client that sends their token."""

    name: str
    token: str
    http: httpx.Client


class DenServer:
    """Den served by uvicorn in a thread on a free port, over ``url``; ``stop()`` always frees both."""

    def __init__(self, url: str, org_policy: auth.OrgPolicy | None = None) -> None:
        self.database = Database(url)
        self.database.migrate()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(self.database, org_policy=org_policy)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"den-{self.port}", daemon=True)
        self._clients: list[httpx.Client] = []

    def start(self) -> DenServer:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"Den did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self.server.should_exit = True
        self.thread.join(timeout=START_TIMEOUT_S)
        self.database.close()

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client of this Den, sending ``token`` if given."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=HTTP_TIMEOUT_S)
        self._clients.append(client)
        return client

    def user(self, prefix: str = "u", email: str | None = None) -> DenUser:
        """A new user (added straight to the database, as `runhouse den user add --db` does)."""
        name = unique(prefix)
        token = self.database.run(lambda session: auth.add_user(session, name, email))
        return DenUser(name, token, self.client(token))

    def org(self, members: dict[str, str]) -> str:
        """A new org with ``members`` (user name to role)."""
        name = unique("org")
        self.database.run(lambda session: auth.add_org(session, name, members))
        return name

    def count(self, table: str, **where: Any) -> int:
        """Rows of ``table`` matching column equalities, read straight from the database (after writing
        the audit entries that reads queued)."""
        self.database.audit.flush()
        model = Base.metadata.tables[table]
        query = select(func.count()).select_from(model)
        for column, value in where.items():
            query = query.where(model.c[column] == value)
        with self.database.engine.connect() as conn:
            return conn.scalar(query) or 0


class DenProcess:
    """``runhouse den serve`` over ``url`` (with more options ``args``) in a process of its own, as an
    administrator runs it, so that a test can kill it outright; ``stop()`` always ends it."""

    def __init__(self, url: str, folder: Path, *args: str) -> None:
        self.url, self.folder, self.args, self.port = url, folder, args, free_port()
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"den-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DenProcess:
        env = {**os.environ, "RH_CONFIG_DIR": str(self.folder / "rh"), KEY_ENV: Fernet.generate_key().decode()}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runhouse.cli", "den", "serve", "--port", str(self.port), "--db", self.url,
                 *self.args],
                env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                httpx.get(f"{self.http_url}/health", timeout=HTTP_TIMEOUT_S)
                return self
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Den did not start on port {self.port}: {self.log.read_text()}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """End the process at once (SIGKILL): nothing it queued gets written."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=START_TIMEOUT_S)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new empty database of the test's own, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'den.sqlite'}"
    return str(request.getfixturevalue("postgres_server").new_database())


@contextlib.contextmanager
def sqlite_den_in(folder: Path) -> Iterator[DenServer]:
    """A running Den on a SQLite file in ``folder``, stopped on leaving (for tests of the client's side, or that
    stop Den themselves)."""
    server = DenServer(f"sqlite:///{folder / 'den.sqlite'}").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def den(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DenServer]:
    """A running Den with an empty database of the module's own, on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('den') / 'den.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_server").new_database()
    server = DenServer(url).start()
    try:
        yield server
    finally:
        server.stop()


def put(user: DenUser, address: str, config: dict[str, Any] | None = None) -> httpx.Response:
    """Save ``config`` (a small function config by default) at ``address`` as ``user``."""
    body = {"config": config if config is not None else {"resource_type": "function", "name": address}}
    return user.http.put(f"/v1/resources{address}", json=body)


# ------------------------------------------------------------------------------------- logged-in clients


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder: a new git repository (the local RNS folder lives in it)."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def alice(den: DenServer, config_dir: Path, project: Path) -> Iterator[DenUser]:
    """Logged in to Den as a new user for the test; logged out (and folder reset) afterwards."""
    user = den.user("alice")
    assert rh.login(token=user.token, den_url=den.url) == user.name
    rh.set_folder("@")
    yield user
    rh.logout()
    configs.set("den_url", None)
    rh.set_folder("~")
