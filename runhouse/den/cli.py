"""``runhouse den``: serve Den, and add users and orgs straight to its database (server administration).

Example::

    runhouse den user add alice --email alice@example.com    # prints alice's token, once
    runhouse den org add acme --member alice --member bob
    runhouse den serve --port 32400                          # SQLite in ~/.rh/den/den.sqlite
    runhouse den serve --db postgresql://den@db.internal/den
    runhouse den serve --max-orgs-per-user 3                 # or --no-user-orgs: only `den org add` makes orgs
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from runhouse.den import DEFAULT_HOST, DEFAULT_MAX_ORGS_PER_USER, DEFAULT_PORT
from runhouse.errors import RunhouseError

den_app = typer.Typer(help="Den, the shared metadata service: serve it and manage its users.", no_args_is_help=True)
user_app = typer.Typer(help="Den users.", no_args_is_help=True)
org_app = typer.Typer(help="Den orgs.", no_args_is_help=True)
den_app.add_typer(user_app, name="user")
den_app.add_typer(org_app, name="org")
console = Console(stderr=True)

DbOption = typer.Option(
    None, "--db", help="Database URL: postgresql://user:pass@host/db, sqlite:///path (default: ~/.rh/den/den.sqlite)."
)


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]{exc}[/red]")
    return typer.Exit(1)


@den_app.command()
def serve(
    host: str = typer.Option(DEFAULT_HOST, help="Address to bind (0.0.0.0 to serve other machines)."),
    port: int = typer.Option(DEFAULT_PORT, help="Port to listen on."),
    db: str | None = DbOption,
    access_log: bool = typer.Option(False, help="Log every request (the audit log records changes either way)."),
    secret_key_file: Path | None = typer.Option(
        None, help="Key that encrypts stored secrets (default ~/.rh/den/secret.key, made on first start; "
        "RH_DEN_SECRET_KEY overrides it)."),
    user_orgs: bool = typer.Option(True, help="Let users create orgs (administrators always can: den org add)."),
    max_orgs_per_user: int = typer.Option(
        DEFAULT_MAX_ORGS_PER_USER, min=0, help="How many orgs one user may create."),
) -> None:
    """Run Den in the foreground; the schema is created or migrated first."""
    from runhouse.den.app import serve as run
    from runhouse.den.auth import OrgPolicy
    from runhouse.den.crypto import SecretBox
    from runhouse.den.db import Database

    try:
        box = SecretBox.load(secret_key_file)
        policy = OrgPolicy(users_create_orgs=user_orgs, max_orgs_per_user=max_orgs_per_user)
        with Database(db) as database:
            version = database.migrate()
            console.print(f"Den on http://{host}:{port}, database {database.display_url} (schema version {version})")
            run(database, host=host, port=port, access_log=access_log, secret_box=box, org_policy=policy)
    except RunhouseError as exc:
        raise _fail(exc) from None


@user_app.command("add")
def add_user(
    name: str = typer.Argument(..., help="User name; also their folder, /NAME."),
    email: str | None = typer.Option(None, help="Email, so others can share with it."),
    db: str | None = DbOption,
) -> None:
    """Create a user and print their token (shown only this once; Den keeps only its hash)."""
    from runhouse.den import auth
    from runhouse.den.db import Database

    try:
        with Database(db) as database:
            database.migrate()
            token = database.run(lambda session: auth.add_user(session, name, email))
    except RunhouseError as exc:
        raise _fail(exc) from None
    console.print(f"user {name} created; their token (shown only now, give it to them):")
    print(token)


@org_app.command("add")
def add_org(
    org: str = typer.Argument(..., help="Org name; also its folder, /ORG."),
    member: list[str] = typer.Option([], "--member", help="A user to add as member (repeatable)."),
    admin: list[str] = typer.Option([], "--admin", help="A user to add as admin (repeatable)."),
    db: str | None = DbOption,
) -> None:
    """Create an org if needed and add members to it."""
    from runhouse.den import auth
    from runhouse.den.db import Database

    members = {**dict.fromkeys(member, "member"), **dict.fromkeys(admin, "admin")}
    try:
        with Database(db) as database:
            database.migrate()
            database.run(lambda session: auth.add_org(session, org, members))
    except RunhouseError as exc:
        raise _fail(exc) from None
    joined = ", ".join(f"{user} ({role})" for user, role in members.items()) or "no new members"
    console.print(f"org {org}: {joined}")
