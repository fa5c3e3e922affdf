"""What a first-time user runs into: ports other processes hold, handles to daemons that are not running, and
CLI mistakes. Each is a clear message and exit code 1 (a typed error in the library), never a traceback, and
nothing is started that nobody asked for."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

import runhouse as rh
from runhouse.cli import app
from runhouse.errors import ClusterUnreachableError
from runhouse.resources.clusters import local_daemon as daemon
from runhouse.resources.clusters.direct import DirectCluster
from tests.conftest import free_port

runner = CliRunner()


@dataclass
class ForeignDaemon:
    """A daemon started with another config folder (another RH_CONFIG_DIR) than the tests'."""

    port: int
    pid: int
    folder: Path


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``runhouse ARGS`` in a process of its own whose config folder is ``folder``."""
    return subprocess.run(
        [sys.executable, "-m", "runhouse.cli", *args], env={**os.environ, "RH_CONFIG_DIR": str(folder)},
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def foreign_daemon(config_dir: Path, tmp_path: Path) -> Iterator[ForeignDaemon]:
    folder = tmp_path / "other-config"
    port = free_port()
    started = _cli(folder, "start", "--port", str(port))
    assert started.returncode == 0, started.stderr
    answer = daemon.health(port)
    assert answer is not None
    try:
        yield ForeignDaemon(port, int(answer["pid"]), folder)
    finally:
        _cli(folder, "stop", "--port", str(port))


@pytest.fixture
def listener() -> Iterator[int]:
    """A port held by a process that is not a runhouse daemon (this one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _fails_cleanly(args: list[str]) -> str:
    """Run ``runhouse ARGS`` and return what it printed, checking it failed with exit code 1, not a traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"a traceback: {result.exception!r}"
    assert "Traceback" not in result.output
    return result.output


# --- item 15: a port held by another daemon, or by something else ----------------------------------------------


def test_start_names_the_daemon_of_another_config_folder_holding_the_port(foreign_daemon):
    said = _fails_cleanly(["start", "--port", str(foreign_daemon.port)])
    assert f"port {foreign_daemon.port} is held by another runhouse daemon (pid {foreign_daemon.pid})" in said
    assert str(foreign_daemon.folder) in said
    assert f"RH_CONFIG_DIR={foreign_daemon.folder} runhouse stop --port {foreign_daemon.port}" in said
    assert daemon.read_token(foreign_daemon.port) is None, "nothing was started or written for this folder"


@pytest.mark.parametrize("command", ["status", "token", "stop", "restart"])
def test_every_daemon_command_names_the_daemon_of_another_config_folder(foreign_daemon, command):
    said = _fails_cleanly([command, "--port", str(foreign_daemon.port)])
    assert f"another runhouse daemon (pid {foreign_daemon.pid})" in said
    assert psutil.pid_exists(foreign_daemon.pid), "the other folder's daemon is left alone"


def test_start_names_a_process_that_is_not_a_daemon_holding_the_port(config_dir, listener):
    said = _fails_cleanly(["start", "--port", str(listener)])
    assert f"127.0.0.1:{listener}: address already in use by pid {os.getpid()}" in said
    assert "not a runhouse daemon" in said
    assert daemon.running_pid(listener) is None


def test_start_with_tls_names_this_folders_daemon_running_without_it(own_cluster):
    said = _fails_cleanly(["start", "--port", str(own_cluster.server_port), "--tls"])
    assert "this config folder's daemon" in said and "without --tls" in said
    assert own_cluster.keys() is not None, "the running daemon is untouched"


def test_stop_never_signals_a_process_a_stale_pid_file_names(config_dir):
    port = free_port()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        Path(daemon.DaemonFiles.local(port).pid).write_text(str(bystander.pid))  # left by a daemon long gone
        result = runner.invoke(app, ["stop", "--port", str(port)])
        assert result.exit_code == 0 and f"no daemon running on port {port}" in result.output
        assert bystander.poll() is None, "stop killed a process that is not a daemon"
    finally:
        bystander.kill()
        bystander.wait()


def test_cli_mistakes_print_a_message_not_a_traceback(config_dir):
    port = free_port()
    assert f"no runhouse daemon answers at localhost:{port}" in _fails_cleanly(["status", "--port", str(port)])
    assert "no token yet" in _fails_cleanly(["token", "--port", str(port)])
    assert "no resource saved" in _fails_cleanly(["ssh", "no_such_cluster"])
    bad_port = runner.invoke(app, ["status", "--port", "0"])  # was taken as "no port given": 32300
    assert bad_port.exit_code == 2 and "--port" in bad_port.output


def test_a_handle_to_a_port_held_by_another_folders_daemon_says_so(foreign_daemon):
    box = rh.cluster(host="localhost", server_port=foreign_daemon.port)
    with pytest.raises(ClusterUnreachableError, match=f"another runhouse daemon \\(pid {foreign_daemon.pid}\\)"):
        box.keys()


# --- item 17: only rh.here and up_if_not() start a daemon ------------------------------------------------------


def _double(x: int) -> int:
    return 2 * x


def test_a_handle_whose_daemon_is_not_running_raises_and_starts_nothing(config_dir):
    port = free_port()
    box = rh.cluster(host="localhost", server_port=port)
    operations = [
        lambda: box.put("k", 1), lambda: box.get("k"), box.keys, lambda: box.delete("k"),
        lambda: box.run(["true"]), lambda: box.run_python(["pass"]), box.status,
        lambda: box.ensure_env(rh.env(env_vars={"MODE": "first"}, name="first_use_env")),
        lambda: rh.function(_double).to(box),
    ]
    for operation in operations:
        with pytest.raises(ClusterUnreachableError) as info:
            operation()
        assert f"localhost:{port}" in str(info.value)
        assert f"runhouse start --port {port}" in str(info.value) and "up_if_not()" in str(info.value)
    assert daemon.health(port) is None and daemon.running_pid(port) is None


def test_up_if_not_starts_the_daemon_of_a_handle(config_dir):
    box = rh.cluster(host="localhost", server_port=free_port())
    try:
        assert box.up_if_not().keys() == []
        box.put("k", 1)
        assert box.get("k") == 1
    finally:
        box.teardown()


def test_rh_here_starts_this_machines_daemon_on_first_use(config_dir, monkeypatch):
    port = free_port()
    monkeypatch.setenv("RH_SERVER_PORT", str(port))
    try:
        rh.here.put("k", 2)
        assert rh.here.get("k") == 2 and daemon.running_pid(port) is not None
    finally:
        daemon.stop(port)


def test_a_handle_to_a_remote_address_without_daemon_says_where_to_start_it():
    box = DirectCluster(host="127.0.0.2", server_port=free_port())
    with pytest.raises(ClusterUnreachableError, match="start it on 127.0.0.2 \\(`runhouse start --port"):
        box.keys()
    with pytest.raises(ClusterUnreachableError, match="cannot be started from here"):
        box.up_if_not()


def test_this_folders_daemon_without_its_pid_file_is_still_used(own_cluster):
    # A second daemon started at the same moment overwrites the pid file, fails to bind, then removes it.
    pid_file = Path(daemon.DaemonFiles.local(own_cluster.server_port).pid)
    pid = pid_file.read_text()
    pid_file.unlink()
    try:
        assert rh.cluster(host="localhost", server_port=own_cluster.server_port).keys() is not None
    finally:
        pid_file.write_text(pid)  # for the fixture to stop it
