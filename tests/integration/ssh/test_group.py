"""runhouse.transport.ssh.HostGroup against two real sshd servers: a result per host, one error for failures."""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator

import pytest

from runhouse.errors import HostGroupError, SSHConnectionError, SSHError, SSHTimeoutError
from runhouse.transport.ssh import CommandResult, HostGroup, SSHConnection
from tests.conftest import free_port
from tests.support.sshd import SSHServer


@pytest.fixture
def servers(sshd: SSHServer, second_sshd: SSHServer) -> list[SSHServer]:
    return [sshd, second_sshd]


@pytest.fixture
def group(servers: list[SSHServer]) -> Iterator[HostGroup]:
    """A group of the test's own over both servers, closed afterwards."""
    with HostGroup([server.creds() for server in servers]) as host_group:
        yield host_group


@pytest.fixture
def group_with_a_down_host(sshd: SSHServer) -> Iterator[HostGroup]:
    """The shared sshd, then a host where nothing listens."""
    with HostGroup([sshd.creds(), sshd.creds(port=free_port())]) as host_group:
        yield host_group


def _only_on(server: SSHServer, command: str) -> str:
    """A shell command that runs ``command`` on ``server`` only (each server has its own home folder)."""
    return f'if [ "$HOME" = {shlex.quote(str(server.home))} ]; then {command}; fi'


def test_run_gives_a_result_per_host_in_the_groups_order(group, servers):
    results = group.run('echo "$HOME"')
    assert list(results) == [server.creds().address for server in servers]
    assert [result.stdout for result in results.values()] == [f"{server.home}\n" for server in servers]


def test_run_on_every_host_at_once(group):
    group.check()
    began = time.monotonic()
    group.run("sleep 1", check=True)
    assert time.monotonic() - began < 2, "the hosts ran one after the other (1 s each)"


def test_without_check_a_non_zero_exit_is_that_hosts_result(group, second_sshd):
    results = group.run(_only_on(second_sshd, "exit 3"))
    assert [result.returncode for result in results.values()] == [0, 3]


def test_a_host_that_is_down_raises_one_error_carrying_the_other_hosts_result(group_with_a_down_host):
    with pytest.raises(HostGroupError) as info:
        group_with_a_down_host.run("echo up")
    up, down = group_with_a_down_host.connections
    assert isinstance(info.value.results[up], CommandResult) and info.value.results[up].stdout == "up\n"
    assert isinstance(info.value.results[down], SSHConnectionError)
    assert list(info.value.failures) == [down] and info.value.host == down


def test_check_true_fails_the_hosts_where_the_command_exited_non_zero(group, sshd, second_sshd):
    with pytest.raises(HostGroupError) as info:
        group.run(_only_on(second_sshd, "echo broken-thing >&2; exit 3"), check=True)
    failure = info.value.results[second_sshd.creds().address]
    assert type(failure) is SSHError and failure.stderr == "broken-thing\n"
    assert info.value.results[sshd.creds().address].returncode == 0


def test_a_host_past_the_timeout_fails_alone(group, sshd, second_sshd):
    group.check()
    began = time.monotonic()
    with pytest.raises(HostGroupError) as info:
        group.run(_only_on(second_sshd, "sleep 5"), timeout=1)
    assert time.monotonic() - began < 3
    assert isinstance(info.value.results[second_sshd.creds().address], SSHTimeoutError)
    assert info.value.results[sshd.creds().address].returncode == 0


def test_check_connects_to_every_host(group):
    group.check()
    assert all(connection.is_connected() for connection in group.connections.values())


def test_check_raises_one_error_naming_the_host_that_is_down(group_with_a_down_host):
    with pytest.raises(HostGroupError) as info:
        group_with_a_down_host.check()
    up, down = group_with_a_down_host.connections
    assert info.value.results[up] is None and isinstance(info.value.results[down], SSHConnectionError)


def test_rsync_uploads_to_every_host(group, servers, tmp_path):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "b.txt").write_text("beta\n")
    results = group.rsync(f"{source}/", "group-upload/")
    assert all("sub/b.txt" in result.stdout for result in results.values())
    assert [(server.home / "group-upload/sub/b.txt").read_text() for server in servers] == ["beta\n", "beta\n"]


def test_rsync_to_a_host_that_is_down_raises_one_error(group_with_a_down_host, tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    with pytest.raises(HostGroupError) as info:
        group_with_a_down_host.rsync(str(tmp_path / "a.txt"), "group-upload-a.txt")
    assert list(info.value.failures) == [list(group_with_a_down_host.connections)[1]]


def test_close_ends_every_connection_the_group_made(group):
    group.check()
    group.close()
    assert not any(connection.is_connected() for connection in group.connections.values())


def test_leaving_the_with_block_closes_the_group(servers):
    with HostGroup([server.creds() for server in servers]) as group:
        group.check()
    assert not any(connection.is_connected() for connection in group.connections.values())


def test_a_given_connection_is_shared_and_left_open_by_close(sshd, second_sshd):
    with SSHConnection(sshd.creds()) as head:
        with HostGroup([head, second_sshd.creds()]) as group:
            group.check()
            assert group.connections[sshd.creds().address] is head
        assert head.is_connected()
        assert not group.connections[second_sshd.creds().address].is_connected()


def test_len_is_the_number_of_hosts(group):
    assert len(group) == 2


def test_the_same_address_twice_is_a_value_error(sshd):
    with pytest.raises(ValueError, match=f"{sshd.creds().address} is in the host group twice"):
        HostGroup([sshd.creds(), SSHConnection(sshd.creds(user="someone-else"))])


def test_an_empty_group_is_a_value_error():
    with pytest.raises(ValueError, match="at least one host"):
        HostGroup([])
