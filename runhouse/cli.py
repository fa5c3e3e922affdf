"""The ``runhouse`` command: thin wrappers over the library.

A user's mistake (a port another process holds, a daemon that is not running, an unknown cluster name) is
a runhouse error: every command prints it on stderr and exits with code 1, never with a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from runhouse.den.cli import den_app
from runhouse.errors import RunhouseError
from runhouse.paths import default_server_port
from runhouse.resources.clusters import local_daemon as daemon

app = typer.Typer(help="runhouse: program across machines as if they were one.", no_args_is_help=True)
console = Console()
error_console = Console(stderr=True, soft_wrap=True)  # soft wrap: a message read by a program stays one line
app.add_typer(den_app, name="den")
ray_node_app = typer.Typer(help="Ray on this node of a multi-node cluster (run by the client over SSH).")
app.add_typer(ray_node_app, name="ray-node", hidden=True)



@app.callback()
def main(quiet: bool = typer.Option(False, "--quiet", "-q", help="Show no progress (as RH_QUIET=1 does).")) -> None:
    """runhouse: program across machines as if they were one."""
    if quiet:
        import os

        os.environ["RH_QUIET"] = "1"


PortOption = typer.Option(None, "--port", min=1, max=65535, help="Daemon port (default: $RH_SERVER_PORT or 32300).")
_Command = TypeVar("_Command", bound=Callable[..., Any])


def _fail(message: str) -> NoReturn:
    """Print ``message`` as an error and exit with code 1."""
    error_console.print(message, style="red", markup=False, highlight=False)
    raise typer.Exit(1)


def command(name: str | None = None) -> Callable[[_Command], _Command]:
    """Register a ``runhouse`` command whose runhouse errors are printed (exit code 1) instead of raised."""

    def register(function: _Command) -> _Command:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except RunhouseError as exc:
                _fail(str(exc))

        app.command(name)(run)
        return function

    return register


def _port(port: int | None) -> int:
    return port or default_server_port()


@command()
def start(
    port: int | None = PortOption,
    host: str = typer.Option(daemon.HOST, help="Address to bind; keep 127.0.0.1 unless clients connect with TLS."),
    tls: bool = typer.Option(False, help="Serve HTTPS with the daemon's own certificate (clients pin it)."),
    ray_address: str | None = typer.Option(None, help="The head of this multi-node cluster's Ray (ip:port)."),
    node_ips: str = typer.Option("", help="The cluster's node addresses, this one first: a,b,c (with --ray-address)."),
) -> None:
    """Start the daemon on this machine in the background."""
    port = _port(port)
    began = time.perf_counter()
    ips = [ip for ip in node_ips.split(",") if ip] or ([ray_address.rpartition(":")[0]] if ray_address else [])
    ray = daemon.RayOptions(ray_address, ips) if ray_address else None
    pid = daemon.start(port, host=host, tls=tls, ray=ray)
    took = time.perf_counter() - began
    console.print(f"daemon running on {'https' if tls else 'http'}://{host}:{port} (pid {pid}, ready in {took:.2f} s)")


@command()
def stop(
    port: int | None = PortOption,
    everything: bool = typer.Option(False, "--all", help="Every daemon and Den of this runhouse folder, and every "
                                    "SSH connection (with its tunnels) runhouse keeps open."),
) -> None:
    """Stop the daemon on this machine and all its workers (--all: everything runhouse runs here)."""
    if everything:
        _stop_everything()
        return
    port = _port(port)
    if daemon.stop(port):
        console.print(f"daemon on port {port} stopped")
        return
    answer = daemon.health(port)
    taken = daemon.other_daemon(port, answer) if answer is not None else None
    if taken is not None:
        _fail(f"no daemon of this config folder runs on port {port}: {taken}")
    console.print(f"no daemon running on port {port}")


def _stop_everything() -> None:
    """Stop this runhouse folder's daemons and Dens, and end runhouse's SSH masters (their tunnels go too)."""
    from runhouse.den.cli import STOP_TIMEOUT_S as DEN_STOP_TIMEOUT_S
    from runhouse.den.files import running_servers, stop_server
    from runhouse.transport.ssh import close_masters

    for port in daemon.running_ports():
        daemon.stop(port)
        console.print(f"daemon on port {port} stopped")
    for record in running_servers():
        stop_server(record, DEN_STOP_TIMEOUT_S)
        console.print(f"Den on port {record.port} stopped")
    closed = close_masters()
    console.print(f"{closed} SSH connection{'s' if closed != 1 else ''} closed (tunnels on them too)")


@command()
def restart(port: int | None = PortOption) -> None:
    """Restart the daemon; deployed envs, functions and modules come back."""
    port = _port(port)
    host, tls, ray = daemon.launch_options(port)
    daemon.stop(port)
    start(port, host, tls, ray.address if ray else None, ",".join(ray.node_ips) if ray else "")


@command()
def token(port: int | None = PortOption) -> None:
    """Print the daemon's token (for curl: -H "Authorization: Bearer $(runhouse token)")."""
    port = _port(port)
    answer = daemon.health(port)
    taken = daemon.other_daemon(port, answer) if answer is not None else None
    if taken is not None:  # this folder's token would not open it
        _fail(taken)
    value = daemon.read_token(port)
    if value is None:
        _fail(f"no token yet for port {port}: start the daemon first (runhouse start --port {port})")
    print(value)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


@contextlib.contextmanager
def _daemon_of(name: str | None, port: int | None) -> Iterator[Any]:
    """The saved cluster ``name``, or the daemon on this machine for no name or ``here``."""
    from runhouse.resources.clusters import DirectCluster, cluster

    if name is not None and name != "here":
        with cluster(name=name) as saved:
            yield saved
    else:
        with DirectCluster(name="here", host="localhost", server_port=_port(port)) as here:
            yield here


def _autostop_text(autostop: dict[str, Any]) -> str:
    minutes = autostop.get("minutes")
    if minutes is None or minutes < 0:
        return "autostop off"
    return f"autostop after {minutes:g} min idle (idle {autostop.get('idle_s', 0):.0f} s)"


@command()
def status(
    name: str | None = typer.Argument(None, help="A saved cluster, or 'here' (default: the daemon on this machine)."),
    port: int | None = PortOption,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Show a daemon's envs (workers, runs, calls), objects, workers and nodes (and an on-demand cluster's
    machines)."""
    import json

    with _daemon_of(name, port) as target:
        info = target.status()
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    if "state" in info:
        console.print(f"[bold]{name}[/bold]: machines {info['state'] or 'not launched'} {' '.join(info['ips'])}")
    if "pid" not in info:
        return
    where = f"cluster {name}" if name not in (None, "here") else f"127.0.0.1:{_port(port)}"
    runs = info.get("runs", {})
    console.print(
        f"[bold]runhouse daemon[/bold] {info['version']} on {where}, pid {info['pid']}, "
        f"Python {info['python']}, up {info['uptime_s']:.0f} s, {_autostop_text(info.get('autostop', {}))}, "
        f"runs {'recorded' if runs.get('recording') else 'not recorded'} ({runs.get('in_flight', 0)} in flight, "
        f"{runs.get('kept', 0)} kept)",
        highlight=False,
    )
    envs = Table("env", "reqs", "env vars", "running", "workers", "objects", "in flight", "calls/min", "errors/min",
                 "restarts", title="Envs")
    for env in info["envs"]:
        restarts = env.get("restarts", {})
        envs.add_row(env["name"], ", ".join(env["reqs"]) or "-", ", ".join(env["env_vars"]) or "-",
                     str(env["running"]), str(len(env.get("workers", []))), str(env.get("objects", 0)),
                     str(env.get("runs_in_flight", 0)), str(env.get("calls_last_minute", 0)),
                     str(env.get("errors_last_minute", 0)), str(sum(restarts.values())))
    objects = Table("name", "kind", "env", title="Objects")
    for obj in info["objects"]:
        objects.add_row(obj["name"], obj["kind"], obj["env"])
    workers = Table("env", "role", "node", "pid", "RSS", "CPU %", "in flight", "restarts", "uptime", title="Workers")
    for w in info["workers"]:
        workers.add_row(
            w["env"], w["role"], str(w.get("node") or "-"), str(w["pid"]), _mib(w["memory_bytes"]),
            f"{w.get('cpu_percent', 0.0):.0f}", str(w["inflight"]), str(w.get("restarts", 0)), f"{w['uptime_s']:.0f} s"
        )
    tables = [envs, objects, workers]
    if len(info.get("nodes", [])) > 1:
        nodes = Table("node", "ip", "alive", "CPUs", "GPUs", "workers", "worker RSS", title="Nodes")
        for node in info["nodes"]:
            nodes.add_row(str(node["index"]), node["ip"], str(node["alive"]), f"{node['cpus']:g}", f"{node['gpus']:g}",
                          str(node.get("workers", 0)), _mib(node.get("worker_memory_bytes", 0)))
        tables.append(nodes)
    for table in tables:
        console.print(table)


@command()
def logs(
    name: str | None = typer.Argument(None, help="A saved cluster, or 'here' (default: the daemon on this machine)."),
    run_id: str | None = typer.Argument(None, help="A run (default: the latest, of --name when given)."),
    fn: str | None = typer.Option(None, "--name", help="The latest run of this function, instance or run name."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing a running run's output until it ends."),
    port: int | None = PortOption,
) -> None:
    """Print a run's output (stdout, stderr and logging): RUN_ID's, else the latest run (of --name)."""
    with _daemon_of(name, port) as target:
        if run_id is None:
            latest = target.runs(name=fn, limit=1)
            if not latest:
                _fail(f"no runs{f' of {fn!r}' if fn else ''} are kept on {name or 'this machine'}")
            run_id = latest[0]["id"]
        if not follow:
            print(target.logs(run_id), end="")
            return
        for text in target.follow_logs(run_id):
            print(text, end="", flush=True)


@command("down")
def down(name: str = typer.Argument(..., help="A saved cluster.")) -> None:
    """Tear a saved cluster down: an on-demand cluster's machines are deleted, a daemon is stopped."""
    from runhouse.resources.clusters import cluster

    cluster(name=name).teardown()
    console.print(f"{name} is down")


@command("login")
def login(
    token: str | None = typer.Option(None, help="Den token (asked for when missing)."),
    den_url: str | None = typer.Option(None, help="Den URL (default: the one in ~/.rh/config.yaml)."),
) -> None:
    """Log in to Den; offers to upload or download config defaults and secrets."""
    from runhouse.account import login as den_login

    user = den_login(token=token, den_url=den_url, interactive=True)
    console.print(f"logged in as {user}")


@command("logout")
def logout(
    remove_secrets: bool = typer.Option(None, "--remove-secrets/--keep-secrets",
                                        help="Delete local credential files too (asked when not given)."),
    den_secrets: bool = typer.Option(None, "--delete-den-secrets/--keep-den-secrets",
                                     help="Delete your secrets stored in Den first (asked when not given)."),
) -> None:
    """Forget the Den token on this machine; offers to delete your Den secrets and local credential files."""
    from runhouse.account import logout as den_logout

    removed = den_logout(interactive=True, remove_secrets=remove_secrets, delete_den_secrets=den_secrets)
    for path in removed:
        console.print(f"removed {path}")
    console.print("logged out")


@command("ssh")
def ssh(name: str = typer.Argument(..., help="Name of a saved SSH cluster.")) -> None:
    """Open an interactive shell on a saved cluster's head node."""
    from runhouse.resources.clusters import cluster

    box = cluster(name=name)
    if not hasattr(box, "ssh"):
        _fail(f"{name} is reached directly, not over SSH: there is no shell to open")
    raise typer.Exit(box.ssh())


@command("notebook")
def notebook(
    name: str = typer.Argument(..., help="A saved cluster, or 'here' (this machine's daemon, on $RH_SERVER_PORT)."),
    port: int = typer.Option(8888, "--port", min=1, max=65535, help="Local port to open JupyterLab at."),
    env: str | None = typer.Option(None, help="The env whose interpreter runs JupyterLab (default: the cluster's)."),
) -> None:
    """Start JupyterLab on a cluster and open it here (the URL with its token is printed); Ctrl-C stops it."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # A closed terminal (SIGHUP) or `kill` (SIGTERM) stops JupyterLab on the cluster as Ctrl-C does.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    with _daemon_of(name, None) as target:
        server = target.notebook(port_forward=port, env=env)
        console.print("Ctrl-C stops JupyterLab")
        server.wait()
    console.print(f"JupyterLab on {name} stopped")


@command("ls")
def ls(folder: str = typer.Argument(None, help="Folder to list (default: the current folder, e.g. ~).")) -> None:
    """List saved resources with their type and last-saved time, here (local) and in Den when logged in."""
    from runhouse.errors import RunhouseError
    from runhouse.rns.store import listing

    table = Table("name", "where", "type", "last saved", title="Saved resources")
    for address, entries in listing(folder):
        where = "local" if address.startswith("~") else "den"
        if isinstance(entries, RunhouseError):
            console.print(f"[yellow]{address} not listed: {entries}[/yellow]")
            continue
        for entry in entries:
            table.add_row(f"{address.rstrip('/')}/{entry['name']}", where, entry["resource_type"],
                          entry["saved_at"] or "-")
    console.print(table)


@ray_node_app.command("start")
def ray_node_start(
    node_ip: str = typer.Option(..., help="This node's address in the cluster."),
    address: str | None = typer.Option(None, help="The head's Ray address to join (none: start the head)."),
    port: int = typer.Option(6379, help="The head's Ray port."),
    options: str = typer.Option("{}", help="ray start resource options as JSON (num_cpus, memory, ...)."),
    token_stdin: bool = typer.Option(False, help="Read the cluster's Ray token from stdin."),
) -> None:
    """Start Ray on this node (or find it running); prints one JSON line."""
    import json
    import sys

    from runhouse.server import ray_nodes

    token = sys.stdin.readline().strip() if token_stdin else None
    try:
        answer = ray_nodes.start_node(node_ip, address, port, json.loads(options), token)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        _fail(f"ray on {node_ip}: {exc}")
    print(json.dumps(answer))


@ray_node_app.command("stop")
def ray_node_stop() -> None:
    """Stop the Ray runhouse started on this node (by its processes); prints one JSON line."""
    import json

    from runhouse.server import ray_nodes

    print(json.dumps(ray_nodes.stop_node()))


if __name__ == "__main__":
    app()
