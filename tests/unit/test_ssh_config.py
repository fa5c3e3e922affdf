"""The ssh_config include file runhouse writes for ``ssh <cluster name>``: aliases, quoting, the user's own config.

Values are checked the way ssh itself reads them back (``ssh -G``, which resolves a host's options without
connecting); connecting through the entries is tested against a real sshd in tests/integration/ssh.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runhouse.errors import ConfigError, InvalidNameError
from runhouse.transport.ssh import SSHCredentials, ssh_config

USER_CONFIG = (b"# my settings\nHost work\n    HostName work.example.com\n    User me\n\n"
               b"Host *\n    ServerAliveInterval 30\n")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder of the test's own, with ssh entries turned on (the test session turns them off)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RH_SSH_CONFIG", "1")
    return home


def _resolved(alias: str, home: Path) -> dict[str, list[str]]:
    """The options ssh resolves for ``alias`` from the home's ssh config (``ssh -G``), lowercase keys."""
    out = subprocess.run(["ssh", "-G", "-F", str(home / ".ssh" / "config"), alias],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    options: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        options.setdefault(key, []).append(value)
    return options


def _include_lines(home: Path) -> list[bytes]:
    return [line for line in (home / ".ssh" / "config").read_bytes().splitlines() if line.startswith(b"Include ")]


@pytest.mark.parametrize("alias", ["rh-a10x", "gpu_1", "A", "_box", "x" * 63])
def test_cluster_names_that_are_plain_words_are_aliases(alias):
    assert ssh_config.check_alias(alias) == alias


@pytest.mark.parametrize(
    "alias",
    ["", "my box", "gpu*", "gpu?", "!gpu", "#gpu", "it's", 'a"b', "a/b", "-gpu", "github.com", "10.0.0.5",
     "localhost", "LocalHost", "gpu\nHost *", "gpu\tx", "a=b", "a%h", "x" * 64],
)
def test_names_ssh_would_misread_are_refused(alias):
    with pytest.raises(InvalidNameError, match="cannot be an ssh host alias"):
        ssh_config.check_alias(alias)


def test_an_entry_carries_the_connection_and_ssh_reads_it_back(home):
    creds = SSHCredentials("10.0.0.5", user="ubuntu", port=2222, private_key="~/keys/id_ed25519",
                           known_hosts="~/kh/known_hosts")

    assert ssh_config.write_host("gpu", creds) == ["gpu"]

    options = _resolved("gpu", home)
    assert options["hostname"] == ["10.0.0.5"]
    assert options["user"] == ["ubuntu"]
    assert options["port"] == ["2222"]
    assert options["identityfile"] == [str(home / "keys" / "id_ed25519")]
    assert options["identitiesonly"] == ["yes"]
    assert options["userknownhostsfile"] == [str(home / "kh" / "known_hosts")]
    assert options["stricthostkeychecking"] == ["true"]
    assert "proxycommand" not in options


def test_paths_with_spaces_quotes_hashes_and_percents_are_read_back_exactly(home):
    odd = home / "a b" / "it's #1 = 100%" / "known hosts"
    creds = SSHCredentials("fe80::1%eth0", user="bob", known_hosts=str(odd))

    ssh_config.write_host("odd", creds)

    options = _resolved("odd", home)
    assert options["userknownhostsfile"] == [str(odd)]  # ssh -G shows it after expanding %-tokens
    assert options["hostname"] == ["fe80::1%eth0"]


def test_a_proxy_command_is_written_as_runhouse_passes_it(home):
    command = "ssh -W %h:%p -i '/keys/my key' bastion"
    ssh_config.write_host("behind", SSHCredentials("10.1.0.7", proxy_command=command))

    given = subprocess.run(["ssh", "-G", "-F", "/dev/null", "-o", f"ProxyCommand={command}", "10.1.0.7"],
                           capture_output=True, text=True, timeout=10, check=True).stdout
    assert _resolved("behind", home)["proxycommand"] == [command]
    assert f"proxycommand {command}" in given.splitlines()  # what runhouse's `-o ProxyCommand=...` gives


def test_a_password_cluster_gets_no_identity_file(home):
    ssh_config.write_host("pw", SSHCredentials("10.0.0.8", user="me", password="secret"))

    text = ssh_config.include_path().read_text()
    assert "IdentityFile" not in text
    assert "secret" not in text


@pytest.mark.parametrize(
    "creds",
    [
        SSHCredentials("10.0.0.5", private_key='/keys/a"b'),
        SSHCredentials("10.0.0.5", private_key="/keys/a\\b"),
        SSHCredentials("10.0.0.5", private_key="/keys/${HOME}/k"),
        SSHCredentials("10.0.0.5", known_hosts="/kh/a\nHost *"),
        SSHCredentials("10.0.0.5", user="me%h"),
        SSHCredentials("10.0.0.5", proxy_command="nc %h %p\nHost *\n  ProxyCommand evil"),
        SSHCredentials("10.0.0.5", proxy_command="sh -c 'nc %h %p"),
    ],
)
def test_values_that_cannot_be_written_safely_are_refused_and_nothing_is_written(home, creds):
    with pytest.raises(ConfigError, match="cannot be written in an ssh config"):
        ssh_config.write_host("gpu", creds)

    assert not (home / ".ssh").exists()


def test_the_users_config_keeps_every_byte_and_gets_one_include_line_at_the_top(home):
    (home / ".ssh").mkdir(mode=0o700)
    user_config = home / ".ssh" / "config"
    user_config.write_bytes(USER_CONFIG)
    user_config.chmod(0o640)

    for port in (22, 2222, 22):
        ssh_config.write_host("gpu", SSHCredentials("10.0.0.5", port=port))
    ssh_config.write_host("cpu", SSHCredentials("10.0.0.6"))

    data = user_config.read_bytes()
    include = f"Include {ssh_config.include_path()}\n".encode()
    assert data == include + USER_CONFIG
    assert stat.S_IMODE(user_config.stat().st_mode) == 0o640
    assert _resolved("work", home)["hostname"] == ["work.example.com"]
    assert _resolved("gpu", home)["serveraliveinterval"] == ["30"]  # the user's Host * still applies after ours


def test_a_missing_config_is_created_private_with_a_private_include_folder(home):
    ssh_config.write_host("gpu", SSHCredentials("10.0.0.5"))

    ssh = home / ".ssh"
    assert stat.S_IMODE((ssh / "config").stat().st_mode) == 0o600
    assert stat.S_IMODE((ssh / "runhouse").stat().st_mode) == 0o700
    assert stat.S_IMODE(ssh_config.include_path().stat().st_mode) == 0o600
    assert (ssh / "config").read_text() == f"Include {ssh_config.include_path()}\n"


def test_a_symlinked_config_is_edited_where_it_lives(home):
    dotfiles = home / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "ssh_config").write_bytes(USER_CONFIG)
    (home / ".ssh").mkdir()
    (home / ".ssh" / "config").symlink_to(dotfiles / "ssh_config")

    ssh_config.write_host("gpu", SSHCredentials("10.0.0.5"))

    assert (home / ".ssh" / "config").is_symlink()
    assert (dotfiles / "ssh_config").read_bytes().endswith(USER_CONFIG)
    assert len(_include_lines(home)) == 1


def test_an_include_line_the_user_already_has_is_not_added_again(home):
    (home / ".ssh").mkdir()
    config = f'Host *\n    User me\n\nMatch all\nInclude "{ssh_config.include_path()}"\n'.encode()
    (home / ".ssh" / "config").write_bytes(config)

    ssh_config.write_host("gpu", SSHCredentials("10.0.0.5"))

    assert (home / ".ssh" / "config").read_bytes() == config


def test_the_include_line_says_tilde_when_home_is_the_accounts_home(monkeypatch):
    monkeypatch.setenv("HOME", pwd.getpwuid(os.getuid()).pw_dir)
    assert ssh_config._include_reference() == "~/.ssh/runhouse/config"  # holds on a machine with another home path


def test_an_alias_of_the_users_own_is_left_to_the_user_and_an_older_entry_of_ours_removed(home):
    ssh_config.write_host("work", SSHCredentials("10.0.0.5"))
    user_config = home / ".ssh" / "config"
    user_config.write_bytes(user_config.read_bytes() + USER_CONFIG)

    with pytest.raises(ConfigError, match="has its own `Host work` entry"):
        ssh_config.write_host("work", SSHCredentials("10.0.0.5"))

    assert "Host work" not in ssh_config.include_path().read_text()
    assert _resolved("work", home)["hostname"] == ["work.example.com"]


def test_other_nodes_are_name_dash_index_unless_another_cluster_is_named_so(home):
    head, node1, node2 = (SSHCredentials(f"10.0.0.{i}") for i in (1, 2, 3))
    ssh_config.write_host("pair-2", SSHCredentials("10.9.9.9"))

    assert ssh_config.write_host("pair", head, [node1, node2]) == ["pair", "pair-1"]

    assert _resolved("pair-1", home)["hostname"] == ["10.0.0.2"]
    assert _resolved("pair-2", home)["hostname"] == ["10.9.9.9"]


def test_a_cluster_named_like_another_clusters_node_takes_the_alias(home):
    ssh_config.write_host("pair", SSHCredentials("10.0.0.1"), [SSHCredentials("10.0.0.2")])

    ssh_config.write_host("pair-1", SSHCredentials("10.9.9.9"))
    ssh_config.write_host("pair", SSHCredentials("10.0.0.1"), [SSHCredentials("10.0.0.2")])  # brought up again

    assert _resolved("pair-1", home)["hostname"] == ["10.9.9.9"]
    assert ssh_config.include_path().read_text().count("Host pair-1\n") == 1


def test_rewriting_an_entry_replaces_it_in_place(home):
    for name in ("a", "b", "c"):
        ssh_config.write_host(name, SSHCredentials("10.0.0.1"))

    ssh_config.write_host("b", SSHCredentials("10.0.0.2"))

    hosts = [line for line in ssh_config.include_path().read_text().splitlines() if line.startswith("Host ")]
    assert hosts == ["Host a", "Host b", "Host c"]
    assert _resolved("b", home)["hostname"] == ["10.0.0.2"]


def test_removing_a_cluster_removes_its_entries_and_nothing_else(home):
    ssh_config.write_host("pair", SSHCredentials("10.0.0.1"), [SSHCredentials("10.0.0.2")])
    ssh_config.write_host("other", SSHCredentials("10.0.0.3"))
    user_config = (home / ".ssh" / "config").read_bytes()

    assert ssh_config.remove_host("pair") is True
    assert ssh_config.remove_host("pair") is False

    text = ssh_config.include_path().read_text()
    assert "Host pair" not in text and "Host other" in text
    assert (home / ".ssh" / "config").read_bytes() == user_config  # the Include line stays


def test_removing_when_nothing_was_written_creates_nothing(home):
    assert ssh_config.remove_host("gpu") is False
    assert not (home / ".ssh").exists()


def test_bring_ups_in_many_processes_at_once_lose_no_entry_and_add_one_include(home):
    (home / ".ssh").mkdir()
    (home / ".ssh" / "config").write_bytes(USER_CONFIG)
    script = textwrap.dedent("""
        import sys
        from runhouse.transport.ssh import SSHCredentials, ssh_config
        for round in range(5):
            ssh_config.write_host(sys.argv[1], SSHCredentials("10.0.0." + sys.argv[2], port=2200 + round))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, f"node{i}", str(i)]) for i in range(8)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 8

    assert len(_include_lines(home)) == 1
    assert (home / ".ssh" / "config").read_bytes().endswith(USER_CONFIG)
    for i in range(8):
        assert _resolved(f"node{i}", home)["hostname"] == [f"10.0.0.{i}"]


def test_a_cluster_that_cannot_have_an_alias_is_a_notice_not_an_error(home, caplog):
    with caplog.at_level(logging.WARNING, logger=ssh_config.__name__):
        assert ssh_config.register_cluster("my box", SSHCredentials("10.0.0.5")) == []

    assert "`ssh 'my box'` will not work in a terminal" in caplog.text
    assert "runhouse ssh NAME" in caplog.text
    assert not (home / ".ssh").exists()


def test_unnamed_clusters_and_rh_ssh_config_0_write_nothing(home, monkeypatch):
    assert ssh_config.register_cluster(None, SSHCredentials("10.0.0.5")) == []
    monkeypatch.setenv("RH_SSH_CONFIG", "0")
    assert ssh_config.register_cluster("gpu", SSHCredentials("10.0.0.5")) == []

    assert not (home / ".ssh").exists()
