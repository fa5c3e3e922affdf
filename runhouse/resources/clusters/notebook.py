"""JupyterLab on a cluster, opened here: ``cluster.notebook()`` and ``runhouse notebook CLUSTER``.

How it goes:

1. The env's interpreter on the cluster (the cluster's ``default_env`` unless told) is asked, through the
   daemon, where it is and whether it has JupyterLab; when it has not, :data:`NOTEBOOK_REQUIREMENT` (what the
   ``notebook`` extra holds) is installed into it with :meth:`Cluster.install_packages`.
2. A small launcher run by that interpreter on the cluster's machine starts JupyterLab bound to 127.0.0.1, in a
   session of its own, with a fresh random token read from the launcher's stdin (never on a command line, so
   ``ps`` does not show it, and never in the daemon's run records), and returns once JupyterLab listens.
3. Its port is forwarded through the cluster's SSH connection (:class:`~runhouse.transport.ssh.Tunnel`); a
   daemon on this machine runs JupyterLab on the local port itself. The URL with the token is printed.
4. Closing (leaving the ``with`` block, Ctrl-C in :meth:`NotebookServer.wait`, or this interpreter exiting)
   stops JupyterLab, its kernels and its whole process group, then closes the tunnel.

Where JupyterLab's process runs is a :class:`NotebookHost`: :class:`LocalHost` (the daemon on this machine) or
:class:`SSHHost` (an SSH cluster's head node); a kind of cluster picks one in its ``notebook`` method.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import json
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from runhouse import progress
from runhouse.errors import NotebookError, PortInUseError, SSHError
from runhouse.lifetime import Closeable

if TYPE_CHECKING:
    from runhouse.resources.clusters.base import Cluster
    from runhouse.resources.env import Env
    from runhouse.transport.ssh import SSHConnection

NOTEBOOK_REQUIREMENT = "jupyterlab>=4.0"  # the `notebook` extra of runhouse, installed where it is missing
DEFAULT_NOTEBOOK_PORT = 8888
START_TIMEOUT_S = 120.0  # JupyterLab's first start on a machine builds its caches
STOP_TIMEOUT_S = 10.0  # JupyterLab's own shutdown (kernels included) before the rest is killed
COMMAND_TIMEOUT_S = 30.0  # one launcher or stop command, beyond the waits above
ANSWER_TIMEOUT_S = 5.0  # one HTTP request to JupyterLab through the tunnel
WAIT_POLL_S = 2.0  # how often wait() checks that JupyterLab still answers
_LOG_TAIL_LINES = 30

# Run on the cluster by the env's interpreter: start JupyterLab (token from stdin), wait until it listens,
# print one JSON line. argv: port (0: any free one), seconds to wait, log lines to report. While it waits it
# writes empty lines: when they (or the report) cannot be written, the client is gone (Ctrl-C, a dropped
# connection) and JupyterLab is stopped, since nobody could stop it later.
_LAUNCHER = """
import json, os, signal, socket, subprocess, sys, time
import psutil
port, timeout = int(sys.argv[1]), float(sys.argv[2])
token = sys.stdin.readline().strip()
if port == 0:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
folder = os.path.join(os.path.expanduser(os.environ.get("RH_CONFIG_DIR") or "~/.rh"), "notebooks")
os.makedirs(folder, mode=0o700, exist_ok=True)
log_path = os.path.join(folder, f"jupyterlab-{port}.log")
argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--port-retries=0", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
if os.geteuid() == 0:  # as the daemon runs, on machines where everything runs as root
    argv.append("--allow-root")
with open(log_path, "wb") as log:
    os.chmod(log_path, 0o600)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "JUPYTER_TOKEN": token})
def stop():
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
def say(text):
    try:
        sys.stdout.write(text + "\\n")
        sys.stdout.flush()
    except OSError:
        stop()
        os._exit(1)
started = psutil.Process(proc.pid).create_time()
deadline = time.monotonic() + timeout
ready = False
while not ready and proc.poll() is None and time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        ready = True
    except OSError:
        say("")
        time.sleep(0.2)
if not ready:
    stop()
with open(log_path, errors="replace") as log:
    tail = "".join(log.readlines()[-int(sys.argv[3]):])
say(json.dumps({"pid": proc.pid, "started": started, "port": port, "ready": ready, "exit_code": proc.poll(),
                "log": log_path, "tail": tail}))
"""

# Run on the cluster: stop JupyterLab (pid, its start time so a reused pid is never signalled), its kernels (in
# sessions of their own) and its process group: SIGTERM (JupyterLab shuts its kernels down), then SIGKILL.
# Prints the pids still alive as a JSON list.
_STOPPER = """
import json, os, signal, sys
import psutil
pid, started, timeout = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
try:
    main = psutil.Process(pid)
    if abs(main.create_time() - started) > 0.01:
        raise psutil.NoSuchProcess(pid)
    procs = [main, *main.children(recursive=True)]
except psutil.NoSuchProcess:
    procs = []
def running(p):
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
if procs:
    main.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
print(json.dumps([p.pid for p in procs if running(p)]))
"""


class NotebookHost(abc.ABC):
    """The machine JupyterLab runs on, as the notebook needs it: run a program there, and reach a port of it."""

    @abc.abstractmethod
    def jupyter_port(self, local_port: int) -> int:
        """The port JupyterLab listens on there when it is to be reached at ``local_port`` here (0: any)."""

    @abc.abstractmethod
    def run(self, argv: list[str], stdin: bytes, timeout: float) -> tuple[int, str, str]:
        """Run ``argv`` there with ``stdin``; returns its exit code, stdout and stderr."""

    @abc.abstractmethod
    def forward(self, remote_port: int, local_port: int) -> Closeable | None:
        """Make JupyterLab's ``remote_port`` reachable at ``local_port`` here; returns what to close after."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The machine, as shown in messages."""


class LocalHost(NotebookHost):
    """This machine (a daemon on it): JupyterLab listens on the local port itself; nothing is forwarded."""

    def jupyter_port(self, local_port: int) -> int:
        return local_port

    def run(self, argv: list[str], stdin: bytes, timeout: float) -> tuple[int, str, str]:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except BaseException as exc:
            # Closing its output (rather than killing it) lets the launcher see that nobody listens and stop
            # what it started.
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise NotebookError(f"`{argv[0]}` did not finish within {timeout:g} s on this machine") from None
            raise
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def forward(self, remote_port: int, local_port: int) -> Closeable | None:
        return None

    @property
    def name(self) -> str:
        return "this machine"


class SSHHost(NotebookHost):
    """A host reached over an SSH connection: JupyterLab's port there is forwarded on the connection's master."""

    def __init__(self, connection: SSHConnection) -> None:
        self.connection = connection

    def jupyter_port(self, local_port: int) -> int:
        return 0

    def run(self, argv: list[str], stdin: bytes, timeout: float) -> tuple[int, str, str]:
        result = self.connection.run(shlex.join(argv), input=stdin, timeout=timeout)
        return result.returncode, result.stdout, result.stderr

    def forward(self, remote_port: int, local_port: int) -> Closeable | None:
        try:
            return self.connection.forward(remote_port, local_port)
        except SSHError:
            if _port_taken(local_port):  # taken since it was checked
                raise _port_in_use(local_port) from None
            raise

    @property
    def name(self) -> str:
        return self.connection.creds.address


class NotebookServer(Closeable):
    """JupyterLab running on a cluster, reached here at :attr:`url`; close it (or leave its ``with`` block) to
    stop JupyterLab, its kernels and the tunnel. Made by :meth:`Cluster.notebook <runhouse.Cluster.notebook>`.

    Attributes:
        url: ``http://127.0.0.1:PORT/lab?token=...``, to open in a browser here.
        local_port: the port here; ``remote_port``: JupyterLab's port on the cluster (bound to its 127.0.0.1).
        token: JupyterLab's token (a new random one per server).
        pid: JupyterLab's process id on the cluster.
    """

    def __init__(self, host: NotebookHost, python: str, local_port: int, label: str) -> None:
        self.local_port = local_port
        self.token = secrets.token_urlsafe(32)
        self.label = label
        launch = _launch(host, python, host.jupyter_port(local_port), self.token)
        self.pid: int = launch["pid"]
        self.remote_port: int = launch["port"]
        self.log_path: str = launch["log"]
        try:
            tunnel = host.forward(self.remote_port, local_port)
        except BaseException:
            _stop(host, python, self.pid, launch["started"], None)
            raise
        # Stops JupyterLab and the tunnel once: on close(), or when this interpreter exits with it still open.
        self._finalizer = weakref.finalize(self, _stop, host, python, self.pid, launch["started"], tunnel)
        try:
            status = self.api_status()
        except BaseException:
            self._finalizer()
            raise
        if status is None:
            self._finalizer()
            raise NotebookError(
                f"JupyterLab listens on port {self.remote_port} of {host.name} but did not answer at "
                f"127.0.0.1:{local_port} here; it was stopped"
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}/lab?token={self.token}"

    def __repr__(self) -> str:  # without the token
        state = "open" if self._finalizer.alive else "closed"
        return f"<NotebookServer JupyterLab on {self.label} at http://127.0.0.1:{self.local_port}/lab, {state}>"

    def api_status(self) -> dict[str, Any] | None:
        """JupyterLab's ``/api/status`` (kernels, connections, last activity) through the tunnel; None when it
        does not answer.

        Raises:
            NotebookError: JupyterLab answered with an error status.
        """
        request = urllib.request.Request(f"http://127.0.0.1:{self.local_port}/api/status",
                                         headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_S) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise NotebookError(f"JupyterLab at 127.0.0.1:{self.local_port} answered {exc.code} {exc.reason}") from None
        except (OSError, ValueError):
            return None

    def wait(self) -> None:
        """Block until Ctrl-C, or until JupyterLab stops answering (shut down from its menu); then close."""
        try:
            while self._finalizer.alive and self.api_status() is not None:
                time.sleep(WAIT_POLL_S)
        except KeyboardInterrupt:
            pass
        finally:
            with _uninterrupted():  # a second Ctrl-C must not leave JupyterLab running
                self.close()

    def close(self) -> None:
        """Stop JupyterLab with its kernels and process group on the cluster, then close the tunnel. Safe to call
        twice.

        Raises:
            NotebookError: some of its processes could not be stopped (their pids are in the message).
        """
        self._finalizer()


def start_notebook(
    cluster: Cluster,
    host: NotebookHost,
    port_forward: int = DEFAULT_NOTEBOOK_PORT,
    env: Env | str | None = None,
    persist: bool = False,
    sync_package_on_close: str | None = None,
) -> NotebookServer:
    """Start JupyterLab in ``env``'s interpreter on ``cluster`` (running on ``host``) and reach it at local port
    ``port_forward``; prints its URL. See :meth:`Cluster.notebook <runhouse.Cluster.notebook>`."""
    if not isinstance(persist, bool):
        raise TypeError(f"persist is True or False, not {persist!r} (the local port is port_forward=)")
    if persist:
        raise ValueError(
            "cluster.notebook(persist=True) is not supported: JupyterLab stops when the notebook is closed. To keep "
            "one running, run it yourself: cluster.run(['jupyter lab --no-browser --port 8888 &']) and "
            "cluster.ssh_tunnel(8888, 8888)"
        )
    if sync_package_on_close is not None:
        raise ValueError(
            "cluster.notebook(sync_package_on_close=...) is not supported: copy files back yourself, e.g. "
            "rh.folder(path='project', system=cluster).to('here', path='project')"
        )
    if isinstance(port_forward, bool) or not isinstance(port_forward, int) or not 0 < port_forward < 65536:
        raise ValueError(f"port_forward is a local port number 1-65535, not {port_forward!r}")
    if _port_taken(port_forward):
        raise _port_in_use(port_forward)
    label = cluster.name or cluster.host
    python = ensure_jupyterlab(cluster, env)
    with progress.step(f"start JupyterLab on {label}"):
        server = NotebookServer(host, python, port_forward, label)
    print(f"JupyterLab on {label}: {server.url}", flush=True)
    return server


def jupyterlab_probe(cluster: Cluster, env: Env | str | None) -> tuple[str, bool]:
    """The path of ``env``'s interpreter on ``cluster`` and whether it can import JupyterLab (one command)."""
    source = ("import importlib.util, json, sys; "
              "print(json.dumps([sys.executable, importlib.util.find_spec('jupyterlab') is not None]))")
    code, out, err = cluster.run_python([source], env=env, stream_logs=False)[0]
    if code != 0:
        raise NotebookError(f"could not ask the env's interpreter on {cluster.name or cluster.host} about "
                            f"JupyterLab (exit code {code})", err[-3000:])
    python, found = json.loads(out.strip().splitlines()[-1])
    return python, found


def ensure_jupyterlab(cluster: Cluster, env: Env | str | None) -> str:
    """Install :data:`NOTEBOOK_REQUIREMENT` into ``env``'s interpreter on ``cluster`` unless it has JupyterLab;
    returns the interpreter's path."""
    python, found = jupyterlab_probe(cluster, env)
    if not found:
        cluster.install_packages(NOTEBOOK_REQUIREMENT, env=env)
    return python


def _launch(host: NotebookHost, python: str, port: int, token: str) -> dict[str, Any]:
    """Start JupyterLab on ``host`` with ``python`` on ``port`` (0: any); returns the launcher's report."""
    argv = [python, "-c", _LAUNCHER, str(port), str(START_TIMEOUT_S), str(_LOG_TAIL_LINES)]
    code, out, err = host.run(argv, f"{token}\n".encode(), START_TIMEOUT_S + COMMAND_TIMEOUT_S)
    try:
        report = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise NotebookError(f"could not start JupyterLab on {host.name} (exit code {code})", err[-3000:]) from None
    if not report["ready"]:
        why = (f"exited with code {report['exit_code']}" if report["exit_code"] is not None
               else f"did not listen within {START_TIMEOUT_S:g} s and was stopped")
        raise NotebookError(f"JupyterLab on {host.name} {why} (its log: {report['log']})", report["tail"])
    return report


def _stop(host: NotebookHost, python: str, pid: int, started: float, tunnel: Closeable | None) -> None:
    """Stop JupyterLab ``pid`` on ``host`` and everything it started, then close ``tunnel``."""
    try:
        argv = [python, "-c", _STOPPER, str(pid), repr(started), str(STOP_TIMEOUT_S)]
        code, out, err = host.run(argv, b"", STOP_TIMEOUT_S + COMMAND_TIMEOUT_S)
    finally:
        if tunnel is not None:
            tunnel.close()
    try:
        left = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise NotebookError(f"could not stop JupyterLab (pid {pid}) on {host.name} (exit code {code})",
                            err[-3000:]) from None
    if left:
        raise NotebookError(f"JupyterLab's processes {left} on {host.name} could not be stopped")


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ignore Ctrl-C (SIGINT) during the block, where signals can be set (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _port_taken(port: int) -> bool:
    """Whether something listens on (or holds) 127.0.0.1:``port`` here."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ssh and JupyterLab bind
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _port_in_use(port: int) -> PortInUseError:
    return PortInUseError(
        f"local port {port} is already in use on this machine (another notebook or program listens there): pass "
        f"another port, e.g. cluster.notebook(port_forward={port + 1}) or `runhouse notebook CLUSTER --port "
        f"{port + 1}`",
        port,
    )

