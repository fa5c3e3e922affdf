"""`runhouse notebook` and cluster.notebook() on this machine's daemon: JupyterLab on the local port itself, stopped
by Ctrl-C with everything it started; the mistakes a user can make get typed errors before anything starts."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest

import runhouse as rh
from runhouse.errors import ClusterUnreachableError, PortInUseError
from tests.conftest import free_port
from tests.support.jupyter import alive, api, jupyterlab_processes, listening


@pytest.fixture
def taken_port():
    """A local port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def runhouse_cli(cluster: rh.Cluster, *args: str) -> subprocess.Popen[str]:
    """`runhouse ARGS` in a process of its own, on the test daemon's port."""
    environ = {**os.environ, "RH_SERVER_PORT": str(cluster.server_port)}
    return subprocess.Popen([sys.executable, "-m", "runhouse.cli", *args], env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_runhouse_notebook_serves_jupyterlab_until_ctrl_c_then_leaves_nothing(cluster):
    port = free_port()
    cli = runhouse_cli(cluster, "notebook", "here", "--port", str(port))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in cli.stdout], daemon=True).start()
    try:
        line = ""
        while "/lab?token=" not in line:
            line = lines.get(timeout=90)
        url = line.split()[-1]
        assert url.startswith(f"http://127.0.0.1:{port}/lab?token=")
        token = url.split("token=")[1]
        assert api(port, "/api/status", token)[0] == 200
        assert api(port, "/api/status", None)[0] in (401, 403)
        processes = jupyterlab_processes(port)
        assert processes
    finally:
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    assert not listening(port)
    assert alive(processes) == []


def test_a_local_port_in_use_is_a_typed_error_naming_it(cluster, taken_port):
    with pytest.raises(PortInUseError, match=f"local port {taken_port} is already in use") as raised:
        cluster.notebook(port_forward=taken_port)
    assert raised.value.port == taken_port


def test_the_cli_says_which_port_is_in_use(cluster, taken_port):
    cli = runhouse_cli(cluster, "notebook", "here", "--port", str(taken_port))
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 1
    assert f"local port {taken_port} is already in use" in err and "Traceback" not in err


@pytest.mark.parametrize("arguments, error, message", [
    ({"persist": True}, ValueError, re.escape("notebook(persist=True) is not supported")),
    ({"sync_package_on_close": "./"}, ValueError, re.escape("notebook(sync_package_on_close=...) is not supported")),
    ({"port_forward": 0}, ValueError, "port_forward is a local port number"),
    ({"port_forward": "8888"}, ValueError, "port_forward is a local port number"),
    ({"persist": 8888}, TypeError, "persist is True or False, not 8888"),
])
def test_unsupported_arguments_are_refused_before_anything_starts(arguments, error, message):
    here = rh.cluster(name="nowhere", host="localhost", server_port=free_port())  # no daemon: nothing is started
    with pytest.raises(error, match=message):
        here.notebook(**arguments)


def test_a_daemon_on_another_machine_reached_directly_has_nothing_to_forward_through():
    remote = rh.cluster(name="elsewhere", host="10.255.255.1", server_port=32300)
    with pytest.raises(ClusterUnreachableError, match="not over SSH"):
        remote.notebook()
