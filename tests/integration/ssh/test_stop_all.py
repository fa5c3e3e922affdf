"""``runhouse stop --all``: every daemon and Den of a runhouse folder, and every SSH master (with its tunnels)
runhouse keeps open, stopped by one command, as the README's "stop everything" says."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from runhouse.transport.ssh import SSHConnection
from tests.conftest import free_port
from tests.support.sshd import SSHServer

RUNHOUSE = [sys.executable, "-m", "runhouse.cli"]


def test_stop_all_stops_daemons_den_and_ssh_connections(sshd: SSHServer, tmp_path: Path) -> None:
    folder = tmp_path / "rh"
    env = {**os.environ, "RH_CONFIG_DIR": str(folder)}
    daemon_port, den_port = free_port(), free_port()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*RUNHOUSE, *args], env=env, capture_output=True, text=True, timeout=90)

    assert cli("start", "--port", str(daemon_port)).returncode == 0
    started = cli("den", "serve", "--detach", "--port", str(den_port))
    assert started.returncode == 0, started.stderr
    connection = SSHConnection(sshd.creds(), control_dir=folder / "ssh")
    connection.check()
    tunnel = connection.forward(sshd.port)  # a tunnel on the master, to the sshd itself
    socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=5).close()
    try:
        out = cli("stop", "--all")
        assert out.returncode == 0, out.stderr
        assert f"daemon on port {daemon_port} stopped" in out.stdout
        assert f"Den on port {den_port} stopped" in out.stdout
        assert "1 SSH connection closed" in out.stdout
        for port in (daemon_port, den_port, tunnel.local_port):
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
        assert not connection.is_connected()
        again = cli("stop", "--all")
        assert again.returncode == 0 and "0 SSH connections closed" in again.stdout
    finally:
        connection.close()
        cli("stop", "--port", str(daemon_port))
        cli("den", "stop", "--port", str(den_port))
