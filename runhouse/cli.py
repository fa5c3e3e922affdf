"""The ``runhouse`` command: thin wrappers over the library."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from runhouse.den.cli import den_app
from runhouse.errors import RunhouseError
from runhouse.paths import default_server_port
from runhouse.resources.clusters import local_daemon as daemon

app = typer.Typer(help="runhouse: program across machines as if they were one.", no_args_is_help=True)
console = Console()
app.add_typer(den_app, name="den")

PortOption = typer.Option(None, "--port", help="Daemon port (default: $RH_SERVER_PORT or 32300).")


def _port(port: int | None) -> int:
    return port or default_server_port()


@app.command()
def start(
    port: int | None = PortOption,
    host: str = typer.Option(daemon.HOST, help="Address to bind; keep 127.0.0.1 unless clients connect with TLS."),
    tls: bool = typer.Option(False, help="Serve HTTPS with the daemon's own certificate (clients pin it)."),
) -> None:
    """Start the daemon on this machine in the background."""
    port = _port(port)
    began = time.perf_counter()
    try:
        pid = daemon.start(port, host=host, tls=tls)
    except RunhouseError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    took = time.perf_counter() - began
    console.print(f"daemon running on {'https' if tls else 'http'}://{host}:{port} (pid {pid}, ready in {took:.2f} s)")


@app.command()
def stop(port: int | None = PortOption) -> None:
    """Stop the daemon on this machine and all its workers."""
    port = _port(port)
    console.print(f"daemon on port {port} stopped" if daemon.stop(port) else f"no daemon running on port {port}")


@app.command()
def restart(port: int | None = PortOption) -> None:
    """Restart the daemon; deployed envs, functions and modules come back."""
    port = _port(port)
    host, tls = daemon.launch_options(port)
    daemon.stop(port)
    start(port, host, tls)


@app.command()
def token(port: int | None = PortOption) -> None:
    """Print the daemon's token (for curl: -H "Authorization: Bearer $(runhouse token)")."""
    value = daemon.read_token(_port(port))
    if value is None:
        console.print(f"[red]no token yet for port {_port(port)}: start the daemon first (runhouse start)[/red]")
        raise typer.Exit(1)
    print(value)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


@app.command()
def status(port: int | None = PortOption) -> None:
    """Show the daemon's envs, objects and workers."""
    from runhouse.resources.clusters import DirectCluster

    port = _port(port)
    if daemon.health(port) is None:
        console.print(f"no daemon answering on port {port} (start it with `runhouse start`)")
        raise typer.Exit(1)
    info = DirectCluster(name="here", host="localhost", server_port=port).status()
    console.print(
        f"[bold]runhouse daemon[/bold] {info['version']} on 127.0.0.1:{port}, pid {info['pid']}, "
        f"Python {info['python']}, up {info['uptime_s']:.0f} s"
    )
    envs = Table("env", "reqs", "env vars", "running", title="Envs")
    for env in info["envs"]:
        envs.add_row(env["name"], ", ".join(env["reqs"]) or "-", ", ".join(env["env_vars"]) or "-", str(env["running"]))
    objects = Table("name", "kind", "env", title="Objects")
    for obj in info["objects"]:
        objects.add_row(obj["name"], obj["kind"], obj["env"])
    workers = Table("env", "role", "pid", "memory", "in flight", "uptime", title="Workers")
    for w in info["workers"]:
        workers.add_row(
            w["env"], w["role"], str(w["pid"]), _mib(w["memory_bytes"]), str(w["inflight"]), f"{w['uptime_s']:.0f} s"
        )
    for table in (envs, objects, workers):
        console.print(table)


@app.command("login")
def login(
    token: str | None = typer.Option(None, help="Den token (asked for when missing)."),
    den_url: str | None = typer.Option(None, help="Den URL (default: the one in ~/.rh/config.yaml)."),
) -> None:
    """Log in to Den; offers to upload or download config defaults and secrets."""
    from runhouse.account import login as den_login

    try:
        user = den_login(token=token, den_url=den_url, interactive=True)
    except RunhouseError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"logged in as {user}")


@app.command("logout")
def logout(
    remove_secrets: bool = typer.Option(None, "--remove-secrets/--keep-secrets",
                                        help="Delete local credential files too (asked when not given)."),
) -> None:
    """Forget the Den token on this machine, and offer to delete local credential files."""
    from runhouse.account import logout as den_logout

    removed = den_logout(interactive=remove_secrets is None, remove_secrets=bool(remove_secrets))
    for path in removed:
        console.print(f"removed {path}")
    console.print("logged out")


@app.command("ssh")
def ssh(name: str = typer.Argument(..., help="Name of a saved SSH cluster.")) -> None:
    """Open an interactive shell on a saved cluster's head node."""
    from runhouse.resources.clusters import cluster

    try:
        box = cluster(name=name)
    except RunhouseError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if not hasattr(box, "ssh"):
        console.print(f"[red]{name} is reached directly, not over SSH: there is no shell to open[/red]")
        raise typer.Exit(1)
    raise typer.Exit(box.ssh())


@app.command("ls")
def ls(folder: str = typer.Argument(None, help="Folder to list (default: the current folder, e.g. ~).")) -> None:
    """List saved resources with their type and last-saved time."""
    from runhouse.rns.store import current_folder, folder_contents

    try:
        entries = folder_contents(folder)
    except RunhouseError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    table = Table("name", "type", "last saved", title=f"Resources in {folder or current_folder()}")
    for entry in entries:
        table.add_row(entry["name"], entry["resource_type"], entry["saved_at"] or "-")
    console.print(table)


if __name__ == "__main__":
    app()
