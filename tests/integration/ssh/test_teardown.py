"""Tearing an SSH cluster down leaves no ssh process for its host running here (no master, no tunnel)."""

from __future__ import annotations

import sys
import time

import psutil
import pytest

import runhouse as rh
import runhouse.resources.clusters.ssh as ssh_cluster_module
from runhouse.errors import HostGroupError, SSHTimeoutError
from tests.conftest import free_port
from tests.integration import funcs
from tests.integration.ssh.test_cluster import _creds

MASTER_EXIT_TIMEOUT_S = 5.0


def _ssh_processes_mentioning(text: str) -> list[psutil.Process]:
    """Local ssh processes (masters and their clients) whose command line holds ``text``."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["name"] not in ("ssh", "sshpass"):
                continue
            if text in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _left_after_teardown(text: str) -> list[str]:
    """The command lines of ssh processes holding ``text`` still running a few seconds after teardown."""
    deadline = time.monotonic() + MASTER_EXIT_TIMEOUT_S
    while (left := _ssh_processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [" ".join(proc.cmdline()) for proc in left]


def test_teardown_ends_the_ssh_master_connection(sshd, config_dir, tmp_path):
    known_hosts = str(sshd.known_hosts_with_key(tmp_path / "known_hosts"))
    box = rh.cluster(ips=[sshd.host], ssh_creds=_creds(sshd, known_hosts=known_hosts), server_port=free_port())
    box.up_if_not()
    assert rh.function(funcs.add).to(box)(1, 2) == 3
    box.hosts.run("true", check=True)
    assert _ssh_processes_mentioning(known_hosts), "the cluster works through a master connection"

    box.teardown()

    assert _left_after_teardown(known_hosts) == []
    assert not box.ssh_connection.is_connected()


def test_teardown_after_a_host_key_accepted_at_the_prompt_ends_every_master(sshd, config_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ssh_cluster_module, "ask_yes_no", lambda question: True)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()  # the host is unknown
    box = rh.cluster(ips=[sshd.host], ssh_creds=_creds(sshd, known_hosts=str(known_hosts)), server_port=free_port())
    with pytest.raises(HostGroupError):
        box.hosts.run("true")  # the host group, made before the key is accepted, is refused the unknown host

    box.up_if_not()  # the prompt accepts the key
    box.hosts.run("true", check=True)
    box.teardown()

    assert _left_after_teardown(str(known_hosts)) == []


def test_teardown_closes_the_connection_even_when_stopping_the_daemon_fails(sshd, config_dir, tmp_path, monkeypatch):
    known_hosts = str(sshd.known_hosts_with_key(tmp_path / "known_hosts"))
    box = rh.cluster(ips=[sshd.host], ssh_creds=_creds(sshd, known_hosts=known_hosts), server_port=free_port())
    box.up_if_not()
    daemon = psutil.Process(box.status()["pid"])
    daemon.suspend()  # a daemon that does not stop at SIGTERM: the stop waits for it, past the step's timeout
    monkeypatch.setattr(ssh_cluster_module, "STOP_TIMEOUT_S", 1.0)
    try:
        with pytest.raises(SSHTimeoutError):
            box.teardown()
        assert _left_after_teardown(known_hosts) == []
    finally:
        for proc in [*daemon.children(recursive=True), daemon]:
            proc.kill()
