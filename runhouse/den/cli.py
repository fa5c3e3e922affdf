"""``runhouse den``: serve Den (in the foreground or in the background), stop it, and administer its users and
orgs through the running Den's admin routes.

Example::

    runhouse den serve --detach                              # SQLite in ~/.rh/den/den.sqlite, port 32400
    TOKEN=$(runhouse den user add alice --email alice@example.com)   # prints alice's token, once
    runhouse den user token alice --revoke-old               # a new token; the old ones stop working
    runhouse den org add acme --member bob --admin alice
    runhouse den stop
    runhouse den serve --db postgresql://den@db.internal/den --max-orgs-per-user 3   # or --no-user-orgs

The admin commands send the admin token (``~/.rh/den/admin_token``, made 0600 by Den's first start;
``--admin-token-file`` or ``$RH_DEN_ADMIN_TOKEN`` for another) to the Den at ``--url``, by default the one
``den serve`` runs from this runhouse folder, else http://127.0.0.1:32400. ``--db URL`` changes a database
directly instead, without a running Den, and says which.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console

from runhouse.den import DEFAULT_HOST, DEFAULT_MAX_ORGS_PER_USER, DEFAULT_PORT
from runhouse.den.files import (
    ServerRecord,
    default_admin_token_file,
    read_private_file,
    read_server,
    running_servers,
    server_log_file,
)
from runhouse.errors import AuthenticationError, ConfigError, DenUnreachableError, RunhouseError
from runhouse.paths import config_dir

den_app = typer.Typer(help="Den, the shared metadata service: serve it and manage its users.", no_args_is_help=True)
user_app = typer.Typer(help="Den users (through the running Den, with its admin token).", no_args_is_help=True)
org_app = typer.Typer(help="Den orgs (through the running Den, with its admin token).", no_args_is_help=True)
den_app.add_typer(user_app, name="user")
den_app.add_typer(org_app, name="org")
console = Console(stderr=True, soft_wrap=True)  # messages stay whole lines in logs and pipes

ADMIN_TOKEN_ENV = "RH_DEN_ADMIN_TOKEN"
DB_ENV = "RH_DEN_DB"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 2.0
REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
_LOG_TAIL_LINES = 20

UrlOption = typer.Option(None, "--url", help="The Den to administer (default: the one `runhouse den serve` runs "
                         f"from this runhouse folder, else http://{DEFAULT_HOST}:{DEFAULT_PORT}).")
AdminTokenFileOption = typer.Option(
    None, "--admin-token-file", help=f"File holding Den's admin token (default: ${ADMIN_TOKEN_ENV}, else "
    "~/.rh/den/admin_token, made by Den's first start).")
DirectDbOption = typer.Option(
    None, "--db", help="Change this database directly instead of asking the running Den (postgresql://... or "
    "sqlite:///path); only for administering a stopped Den.")


def _fail(exc: Exception | str) -> NoReturn:
    console.print(str(exc), style="red", markup=False)
    raise typer.Exit(1)


def _local_url(host: str, port: int) -> str:
    """The URL that reaches a Den bound to ``host:port`` from this machine."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _health(url: str) -> dict[str, Any] | None:
    """Den's ``/health`` at ``url``, or None when nothing (or something that is not Den) answers."""
    try:
        answer = httpx.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S)
        body = answer.json()
    except (httpx.HTTPError, httpx.InvalidURL, ValueError):
        return None
    return body if answer.status_code == 200 and isinstance(body, dict) and "schema_version" in body else None


# ---------------------------------------------------------------------------------------- serving


@den_app.command()
def serve(
    host: str = typer.Option(DEFAULT_HOST, help="Address to bind (0.0.0.0 to serve other machines)."),
    port: int = typer.Option(DEFAULT_PORT, min=1, max=65535, help="Port to listen on."),
    db: str | None = typer.Option(
        None, "--db", envvar=DB_ENV,
        help="Database URL: postgresql://user:pass@host/db, sqlite:///path (default: ~/.rh/den/den.sqlite)."),
    detach: bool = typer.Option(False, "--detach", help="Run in the background (log in ~/.rh/den/servers/PORT.log); "
                                "return once Den answers. `runhouse den stop` stops it."),
    access_log: bool = typer.Option(False, help="Log every request (the audit log records changes either way)."),
    secret_key_file: Path | None = typer.Option(
        None, help="Key that encrypts stored secrets (default ~/.rh/den/secret.key, made on first start; "
        "RH_DEN_SECRET_KEY overrides it)."),
    admin_token_file: Path | None = typer.Option(
        None, help="Where Den's admin token is kept (default ~/.rh/den/admin_token, made 0600 on first start)."),
    user_orgs: bool = typer.Option(True, help="Let users create orgs (administrators always can: den org add)."),
    max_orgs_per_user: int = typer.Option(
        DEFAULT_MAX_ORGS_PER_USER, min=0, help="How many orgs one user may create."),
) -> None:
    """Run Den (in the foreground unless --detach); the schema is created or migrated first."""
    try:
        if detach:
            options = ["--host", host, "--port", str(port), "--access-log" if access_log else "--no-access-log",
                       "--user-orgs" if user_orgs else "--no-user-orgs", "--max-orgs-per-user", str(max_orgs_per_user),
                       *(["--secret-key-file", str(secret_key_file)] if secret_key_file else []),
                       *(["--admin-token-file", str(admin_token_file)] if admin_token_file else [])]
            _serve_detached(host, port, db, options)
        else:
            _serve(host, port, db, access_log, secret_key_file, admin_token_file, user_orgs, max_orgs_per_user)
    except RunhouseError as exc:
        _fail(exc)


def _serve(host: str, port: int, db: str | None, access_log: bool, secret_key_file: Path | None,
           admin_token_file: Path | None, user_orgs: bool, max_orgs_per_user: int) -> None:
    from runhouse.den import app
    from runhouse.den.auth import OrgPolicy, new_admin_token
    from runhouse.den.crypto import SecretBox
    from runhouse.den.db import Database
    from runhouse.den.files import already_running, claim_server, ensure_private_file, release_server

    box = SecretBox.load(secret_key_file)
    token_file = admin_token_file or default_admin_token_file()
    admin_token = ensure_private_file(token_file, "Den's admin token", new_admin_token)
    policy = OrgPolicy(users_create_orgs=user_orgs, max_orgs_per_user=max_orgs_per_user)
    running = read_server(port)
    if running is not None:
        raise ConfigError(already_running(running))
    with Database(db) as database:
        version = database.migrate()
        sock = app.listen(host, port)
        record = ServerRecord.of_this_process(port, _local_url(host, port), database.display_url)
        claim_server(record)
        try:
            console.print(f"Den on {record.url}, database {database.display_url} (schema version {version}); "
                          f"admin token in {token_file}", markup=False)
            app.serve(database, host=host, port=port, access_log=access_log, secret_box=box, org_policy=policy,
                      admin_token=admin_token, sock=sock)
        finally:
            sock.close()
            release_server(record)


def _serve_detached(host: str, port: int, db: str | None, options: list[str]) -> None:
    """Start ``den serve`` with ``options`` in a session of its own, its output in its log; return once it
    answers, or fail with the end of its log."""
    from runhouse.daemon_files import PRIVATE_FILE_MODE
    from runhouse.den.files import already_running
    from runhouse.lifetime import terminate_process

    url = _local_url(host, port)
    running = read_server(port)
    if running is not None:
        raise ConfigError(already_running(running))
    if _health(url) is not None:
        raise ConfigError(f"a Den that this runhouse folder ({config_dir()}) did not start already answers at {url}; "
                          "stop it from the folder it was started with, or pass another --port")
    log = server_log_file(port)
    env = {**os.environ, **({DB_ENV: db} if db else {})}  # not on the command line, where `ps` shows passwords
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
    offset = os.lseek(fd, 0, os.SEEK_END)
    with os.fdopen(fd, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", __name__, "serve", *options], stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _fail_start(f"Den did not start on port {port} (exit code {process.returncode})", log, offset)
        record = read_server(port)
        if record is not None and record.pid == process.pid and _health(url) is not None:
            console.print(f"Den runs in the background on {url} (pid {process.pid}, database {record.database}); "
                          f"log: {log}; stop it with `runhouse den stop --port {port}`", markup=False)
            return
        time.sleep(0.05)
    terminate_process(process.pid, STOP_TIMEOUT_S)
    _fail_start(f"Den did not answer on {url} within {START_TIMEOUT_S:.0f} s, so it was stopped", log, offset)


def _fail_start(message: str, log: Path, offset: int) -> NoReturn:
    with log.open("rb") as file:
        file.seek(offset)
        tail = file.read().decode(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
    _fail("\n".join([f"{message}; the end of its log ({log}):", *("  " + line for line in tail)]))


@den_app.command()
def stop(port: int | None = typer.Option(None, min=1, max=65535, help="The Den's port (default: the one Den "
                                         "running from this runhouse folder)."),
         ) -> None:
    """Stop a Den started from this runhouse folder (SIGTERM, then SIGKILL after a few seconds)."""
    from runhouse.den.files import stop_server

    records = running_servers() if port is None else [r for r in [read_server(port)] if r is not None]
    if len(records) > 1:
        _fail(f"several Dens run from this runhouse folder (ports {', '.join(str(r.port) for r in records)}): "
              "pass --port")
    if not records:
        where = f"on port {port}" if port is not None else "at all"
        other = _health(_local_url(DEFAULT_HOST, port)) if port is not None else None
        if other is not None:
            _fail(f"no Den of this runhouse folder ({config_dir()}) runs on port {port}, but another Den answers "
                  "there: stop it from the runhouse folder (RH_CONFIG_DIR) it was started with")
        console.print(f"no Den of this runhouse folder ({config_dir()}) runs {where}; nothing to stop", markup=False)
        return
    record = records[0]
    stop_server(record, STOP_TIMEOUT_S)
    console.print(f"Den on port {record.port} (pid {record.pid}) stopped", markup=False)


# ------------------------------------------------------------------------------------ administering


class _AdminClient:
    """Den's admin routes at ``url`` (resolved as ``--url`` says), with the admin token."""

    def __init__(self, url: str | None, token_file: Path | None) -> None:
        self.url = (url or _default_url()).rstrip("/")
        self.token_file = token_file

    def request(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        from runhouse.protocol import error_from_envelope

        if _health(self.url) is None:
            raise DenUnreachableError(
                f"no Den answers at {self.url}: start one with `runhouse den serve --detach`, or pass the running "
                "Den's --url (use --db URL to change a stopped Den's database directly)")
        try:
            token, source = self._token()
        except ConfigError as exc:
            raise ConfigError(f"Den at {self.url} answers, but {exc}") from None
        try:
            answer = httpx.request(method, f"{self.url}{path}", json=body, timeout=REQUEST_TIMEOUT,
                                   headers={"Authorization": f"Bearer {token}"})
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise DenUnreachableError(f"Den at {self.url} did not answer: {exc}") from None
        if answer.status_code == 200:
            result: dict[str, Any] = answer.json()
            return result
        error = error_from_envelope(answer.status_code, answer.content, f"Den at {self.url}")
        if isinstance(error, AuthenticationError):
            raise AuthenticationError(
                f"Den at {self.url} refused the admin token from {source}: it was made for another Den (each Den "
                "makes its own in the runhouse folder it runs from); pass --admin-token-file or --url") from None
        raise error

    def _token(self) -> tuple[str, str]:
        """The admin token and where it came from."""
        if self.token_file is not None:
            return self._read(self.token_file), str(self.token_file)
        if os.environ.get(ADMIN_TOKEN_ENV, "").strip():
            return os.environ[ADMIN_TOKEN_ENV].strip(), f"${ADMIN_TOKEN_ENV}"
        path = default_admin_token_file()
        return self._read(path), str(path)

    @staticmethod
    def _read(path: Path) -> str:
        try:
            token = read_private_file(path, "Den's admin token file")
        except FileNotFoundError:
            raise ConfigError(
                f"there is no admin token at {path}: Den makes it at its first start in the runhouse folder it "
                f"runs from; for a Den of another folder or machine pass --admin-token-file or set "
                f"${ADMIN_TOKEN_ENV}") from None
        if not token:
            raise ConfigError(f"its admin token file {path} is empty")
        return token


def _default_url() -> str:
    """The URL of the Den running from this runhouse folder, else the default one."""
    records = running_servers()
    if len(records) > 1:
        raise ConfigError(f"several Dens run from this runhouse folder ({', '.join(r.url for r in records)}): "
                          "pass --url")
    return records[0].url if records else _local_url(DEFAULT_HOST, DEFAULT_PORT)


def _directly(db: str, action: str, *args: Any) -> tuple[dict[str, Any], str]:
    """Run :mod:`runhouse.den.admin`'s ``action`` with ``args`` on database ``db`` directly; its result and
    the database's URL, password hidden. (Imported only here: the HTTP path needs no SQLAlchemy.)"""
    from runhouse.den import admin
    from runhouse.den.auth import Admin
    from runhouse.den.db import Database

    function: Callable[..., dict[str, Any]] = getattr(admin, action)
    with Database(db) as database:
        database.migrate()
        return database.run(lambda session: function(Admin(session), *args)), database.display_url


def _where(url: str | None, db: str | None, token_file: Path | None) -> tuple[str, _AdminClient | None]:
    if db is not None:
        if url is not None or token_file is not None:
            raise ConfigError("--db changes a database directly: it takes no --url or --admin-token-file")
        return "", None
    client = _AdminClient(url, token_file)
    return f"Den at {client.url}", client


@user_app.command("add")
def add_user(
    name: str = typer.Argument(..., help="User name; also their folder, /NAME."),
    email: str | None = typer.Option(None, help="Email, so others can share with it."),
    url: str | None = UrlOption,
    admin_token_file: Path | None = AdminTokenFileOption,
    db: str | None = DirectDbOption,
) -> None:
    """Create a user and print their token (shown only this once; Den keeps only its hash)."""
    result, where = _admin(url, db, admin_token_file, ("POST", "/v1/admin/users", {"name": name, "email": email}),
                           ("add_user", name, email))
    console.print(f"user {name} created in {where}; their token (shown only now, give it to them):", markup=False)
    print(result["token"])


@user_app.command("token")
def user_token(
    name: str = typer.Argument(..., help="The user's name or email."),
    revoke_old: bool = typer.Option(False, "--revoke-old", help="Revoke every older token of the user (lost or "
                                    "leaked); without it they keep working."),
    url: str | None = UrlOption,
    admin_token_file: Path | None = AdminTokenFileOption,
    db: str | None = DirectDbOption,
) -> None:
    """Issue a new token for a user and print it (shown only this once)."""
    result, where = _admin(url, db, admin_token_file,
                           ("POST", f"/v1/admin/users/{_segment(name)}/tokens", {"revoke_old": revoke_old}),
                           ("issue_token", name, revoke_old))
    older = (f"{result['revoked']} older token(s) revoked" if revoke_old
             else "older tokens still work (--revoke-old revokes them)")
    console.print(f"new token for {result['name']} from {where}; {older}; the token (shown only now):", markup=False)
    print(result["token"])


@org_app.command("add")
def add_org(
    org: str = typer.Argument(..., help="Org name; also its folder, /ORG."),
    member: list[str] = typer.Option([], "--member", help="A user to add as member (repeatable)."),
    admins: list[str] = typer.Option([], "--admin", help="A user to add as admin (repeatable)."),
    url: str | None = UrlOption,
    admin_token_file: Path | None = AdminTokenFileOption,
    db: str | None = DirectDbOption,
) -> None:
    """Create an org if needed, and add members to it (or change their roles)."""
    members = {**dict.fromkeys(member, "member"), **dict.fromkeys(admins, "admin")}
    result, where = _admin(url, db, admin_token_file, ("PUT", f"/v1/admin/orgs/{_segment(org)}", {"members": members}),
                           ("add_org", org, members))
    joined = ", ".join(f"{m['user']} ({m['role']})" for m in result["members"]) or "none yet"
    console.print(f"org {org} {'created' if result['created'] else 'updated'} in {where}; members: {joined}",
                  markup=False)


def _admin(url: str | None, db: str | None, token_file: Path | None, request: tuple[str, str, dict[str, Any]],
           direct: tuple[Any, ...]) -> tuple[dict[str, Any], str]:
    """Do an admin action at the running Den (``request``: method, path, body) or, with ``--db``, straight on
    that database (``direct``: the action's name and arguments); returns Den's answer and where it was done.
    A runhouse error is printed and exits 1."""
    try:
        where, client = _where(url, db, token_file)
        if client is not None:
            return client.request(*request), where
        assert db is not None
        result, shown = _directly(db, *direct)
        return result, f"database {shown} (directly, not through a running Den)"
    except RunhouseError as exc:
        _fail(exc)


def _segment(text: str) -> str:
    """``text`` as one URL path segment (Den validates the name itself)."""
    from urllib.parse import quote

    return quote(text, safe="@")


if __name__ == "__main__":
    den_app()
