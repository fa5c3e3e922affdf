"""The loopback_nodes fixture itself: every node answers plain ssh with the shared key, as itself."""

from __future__ import annotations

import subprocess

from tests.support.sshd import LoopbackNodes


def _ssh(nodes: LoopbackNodes, ip: str, command: str) -> str:
    """``command``'s output on the node at ``ip``, over the system's ssh client, checking the host key strictly."""
    result = subprocess.run(
        [
            "ssh",
            "-F", "/dev/null",  # no user or system client config
            "-i", str(nodes.private_key),
            "-p", str(nodes.port),
            "-o", f"UserKnownHostsFile={nodes.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            f"{nodes.user}@{ip}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, f"ssh to {ip} failed ({result.returncode}): {result.stderr}"
    return result.stdout.strip()


def test_each_node_answers_with_its_own_home(loopback_nodes: LoopbackNodes) -> None:
    assert loopback_nodes.ips == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    homes = [_ssh(loopback_nodes, ip, "echo $HOME") for ip in loopback_nodes.ips]
    assert homes == [str(home) for home in loopback_nodes.homes]
    assert len(set(homes)) == 3
    assert loopback_nodes.ssh_creds() == {
        "ssh_user": loopback_nodes.user,
        "ssh_private_key": str(loopback_nodes.private_key),
        "ssh_port": loopback_nodes.port,
        "known_hosts": str(loopback_nodes.known_hosts),
    }
