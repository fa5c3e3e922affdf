"""``ssh <cluster name>`` in a plain terminal: bringing a cluster up writes its ssh_config entry, teardown removes it.

Each test has a home folder of its own (``HOME``; ssh itself reads the account's home, so the real ``ssh`` is
pointed at the test's config with ``-F``) and runs it non-interactively (``BatchMode``) against the loopback sshd.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import runhouse as rh
from runhouse.resources.clusters.code import local_wheel
from runhouse.resources.clusters.ssh import SSHCluster
from runhouse.transport.ssh import ssh_config
from tests.conftest import free_port
from tests.integration.ssh.test_cluster import _creds
from tests.support.sshd import LoopbackNodes

USER_CONFIG = b"# mine\nHost work\n    HostName work.example.com\n\nHost *\n    ServerAliveInterval 30\n"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config_dir: Path) -> Path:
    """A home folder of the test's own with ssh entries turned on; pip keeps its real cache and settings."""
    real = Path.home()
    local_wheel()  # built with the real home's pip settings, before HOME moves
    monkeypatch.setenv("XDG_CACHE_HOME", os.environ.get("XDG_CACHE_HOME", str(real / ".cache")))
    monkeypatch.setenv("XDG_CONFIG_HOME", os.environ.get("XDG_CONFIG_HOME", str(real / ".config")))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RH_SSH_CONFIG", "1")
    return home


def _ssh(home: Path, alias: str, command: str = "echo hi") -> subprocess.CompletedProcess[str]:
    """The real ssh client, as a user would type ``ssh ALIAS COMMAND``, reading the home's ssh config."""
    return subprocess.run(
        ["ssh", "-F", str(home / ".ssh" / "config"), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", alias, command],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )


def _cluster(sshd, name: str, **creds) -> SSHCluster:
    return rh.cluster(name=name, ips=[sshd.host], ssh_creds=_creds(sshd, **creds), server_port=free_port())


def test_ssh_cluster_name_reaches_a_cluster_brought_up_and_not_after_teardown(sshd, home, in_a_project):
    box = _cluster(sshd, "~/team/rh-alias")  # an address: the alias is its last part
    box.up_if_not()
    try:
        reached = _ssh(home, "rh-alias", "echo hi from $HOME")
        assert (reached.returncode, reached.stdout) == (0, f"hi from {sshd.home}\n"), reached.stderr
    finally:
        box.teardown()

    gone = _ssh(home, "rh-alias")
    assert gone.returncode == 255 and "rh-alias" in gone.stderr
    assert "Host rh-alias" not in ssh_config.include_path().read_text()


def test_a_key_and_known_hosts_at_paths_with_spaces_quotes_and_percents_work(sshd, home, tmp_path):
    key = tmp_path / "my keys" / "it's #1 key"
    key.parent.mkdir()
    shutil.copy(sshd.private_key, key)
    key.chmod(0o600)
    known_hosts = sshd.known_hosts_with_key(tmp_path / "100% known hosts")
    box = _cluster(sshd, "rh-odd-paths", ssh_private_key=str(key), known_hosts=str(known_hosts))
    box.up_if_not()
    try:
        reached = _ssh(home, "rh-odd-paths")
        assert (reached.returncode, reached.stdout) == (0, "hi\n"), reached.stderr
    finally:
        box.teardown()


def test_the_users_config_is_kept_and_bring_ups_add_one_include_line(sshd, home):
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "config").write_bytes(USER_CONFIG)
    first, second = _cluster(sshd, "rh-first"), _cluster(sshd, "rh-second")
    try:
        first.up_if_not()
        first.close()
        first.up_if_not()  # connects again: the entry is written again
        second.up_if_not()

        include = f"Include {ssh_config.include_path()}\n".encode()
        assert (home / ".ssh" / "config").read_bytes() == include + USER_CONFIG
        assert [_ssh(home, name).stdout for name in ("rh-first", "rh-second")] == ["hi\n", "hi\n"]
    finally:
        first.teardown()
        second.teardown()
    assert (home / ".ssh" / "config").read_bytes() == include + USER_CONFIG  # teardown leaves the user's file


def test_runhouse_down_removes_the_entry(sshd, home, in_a_project):
    box = _cluster(sshd, "rh-down")
    box.up_if_not()
    box.save()
    box.close()
    assert _ssh(home, "rh-down").returncode == 0

    down = subprocess.run([sys.executable, "-m", "runhouse.cli", "down", "rh-down"], capture_output=True, text=True,
                          timeout=90)

    assert down.returncode == 0, down.stdout + down.stderr
    assert "Host rh-down" not in ssh_config.include_path().read_text()
    assert _ssh(home, "rh-down").returncode == 255


@pytest.mark.parametrize("name", ["my box\nHost *\n    ProxyCommand touch pwned", "github.com"])
def test_a_name_that_cannot_be_an_alias_brings_up_with_a_notice_and_writes_nothing(sshd, home, caplog, name):
    box = _cluster(sshd, name)
    with caplog.at_level(logging.WARNING, logger=ssh_config.__name__):
        box.up_if_not()
    try:
        assert box.run(["echo up"])[0][1] == "up\n"
    finally:
        box.teardown()

    assert "will not work in a terminal" in caplog.text
    assert not (home / ".ssh").exists()


def test_the_other_nodes_of_a_cluster_are_name_dash_index(home, config_dir):
    with LoopbackNodes(2) as nodes:
        creds = {"ssh_user": nodes.user, "ssh_private_key": str(nodes.private_key), "ssh_port": nodes.port,
                 "known_hosts": str(nodes.known_hosts)}
        pair = SSHCluster(name="rh-nodes", ips=nodes.ips, ssh_creds=creds, server_port=free_port())
        pair.up_if_not()
        try:
            homes = [_ssh(home, alias, "echo $HOME").stdout for alias in ("rh-nodes", "rh-nodes-1")]
            assert homes == [f"{nodes.homes[0]}\n", f"{nodes.homes[1]}\n"]
        finally:
            pair.teardown()
        assert "rh-nodes" not in ssh_config.include_path().read_text()


def test_an_on_demand_cluster_gets_its_entry_at_launch_and_loses_it_at_teardown(home, loopback, in_a_project):
    gpu = rh.ondemand_cluster(name="rh-od-alias", instance_type="A10G:1", provisioner="loopback",
                              server_port=free_port(), autostop_mins=-1)
    gpu.up_if_not()
    try:
        reached = _ssh(home, "rh-od-alias")  # the launched machine's address, user and key, its host key checked
        assert (reached.returncode, reached.stdout) == (0, "hi\n"), reached.stderr
    finally:
        gpu.teardown()

    assert "Host rh-od-alias" not in ssh_config.include_path().read_text()
