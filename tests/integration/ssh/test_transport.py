"""runhouse.transport.ssh against a real sshd: commands, host keys, faults, rsync and tunnels."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from runhouse.errors import HostKeyError, SSHAuthenticationError, SSHConnectionError, SSHError, SSHTimeoutError
from runhouse.transport.ssh import SSHConnection, SSHCredentials
from tests.conftest import free_port
from tests.support.sshd import SSHServer, generate_key


@pytest.fixture
def conn(sshd: SSHServer) -> Iterator[SSHConnection]:
    """A connection of the test's own to the shared sshd, closed afterwards."""
    with SSHConnection(sshd.creds()) as connection:
        yield connection


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server on a free loopback port (the "service on the host" that tunnels lead to)."""

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(4096):
                self.request.sendall(data)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _echo_through(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _gone(proc: psutil.Process) -> bool:
    """Exited (a zombie counts: containers may have no init process to reap it)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _remote_file(conn: SSHConnection, path: str) -> str:
    return conn.run(f"cat {path}", check=True).stdout


# -- commands ------------------------------------------------------------------------------------------------


def test_run_returns_exit_code_stdout_and_stderr_apart(conn):
    result = conn.run("echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_remote_sessions_live_in_the_test_home_not_the_real_one(conn, sshd):
    result = conn.run('pwd; echo "$HOME"; echo "$RH_CONFIG_DIR"', check=True)
    assert result.stdout.splitlines() == [str(sshd.home), str(sshd.home), str(sshd.home / ".rh")]


def test_on_output_gets_each_line_while_the_command_still_runs(conn):
    seen: list[tuple[float, str]] = []
    command = "echo first; echo warning >&2; sleep 1; echo last"
    result = conn.run(command, on_output=lambda line: seen.append((time.monotonic(), line)))
    finished = time.monotonic()
    assert sorted(line for _, line in seen) == ["first", "last", "warning"]
    first_seen = next(at for at, line in seen if line == "first")
    assert finished - first_seen > 0.5, "the first line arrived only when the command ended"
    assert (result.stdout, result.stderr) == ("first\nlast\n", "warning\n")


def test_input_is_fed_to_the_command(conn):
    assert conn.run("tr a-z A-Z", input=b"hello\nworld\n").stdout == "HELLO\nWORLD\n"


def test_check_raises_ssh_error_carrying_stderr(conn):
    with pytest.raises(SSHError, match="exited with code 2") as info:
        conn.run("echo broken-thing >&2; exit 2", check=True)
    assert "broken-thing" in str(info.value) and info.value.stderr == "broken-thing\n"


def test_a_command_exiting_255_is_its_own_exit_code_not_a_connection_error(conn):
    assert conn.run("exit 255").returncode == 255


def test_timeout_raises_and_leaves_no_ssh_process_behind(conn):
    command = "sleep 30; true # timeout-marker"
    began = time.monotonic()
    with pytest.raises(SSHTimeoutError, match="within 1 s"):
        conn.run(command, timeout=1)
    assert time.monotonic() - began < 3
    running = _processes_mentioning("timeout-marker")
    assert [proc for proc in running if proc.name() in ("ssh", "sshpass")] == [], "the local ssh process still runs"
    assert conn.is_connected(), "the master connection survives a command's timeout"
    for remote in running:  # the command itself goes on (sshd does not signal it): stop it here
        for proc in [*remote.children(recursive=True), remote]:
            proc.kill()


def test_operations_share_one_master_connection(conn):
    assert not conn.is_connected()
    began = time.monotonic()
    conn.run("true", check=True)
    first = time.monotonic() - began
    reuse = []
    for _ in range(3):
        began = time.monotonic()
        conn.run("true", check=True)
        reuse.append(time.monotonic() - began)
    assert min(reuse) < first / 3, f"first {first:.3f} s, then {reuse}"
    assert conn.is_connected()
    assert len(_processes_mentioning(str(conn.control_path))) == 1, "exactly one master process"


def test_close_ends_the_master_and_may_be_called_twice(conn):
    conn.run("true", check=True)
    conn.close()
    conn.close()
    assert not conn.is_connected() and not conn.control_path.exists()
    assert conn.run("echo again").stdout == "again\n"


def test_concurrent_first_use_starts_one_master(conn):
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(lambda i: conn.run(f"echo {i}").stdout, range(6))) == [f"{i}\n" for i in range(6)]
    assert len(_processes_mentioning(str(conn.control_path))) == 1


def test_more_concurrent_commands_than_sshd_sessions_still_run_with_clean_stderr(conn):
    # sshd allows 10 sessions per connection by default; ssh gives the others connections of their own
    conn.check()
    with ThreadPoolExecutor(14) as pool:
        results = list(pool.map(lambda i: conn.run(f"sleep 0.5; echo {i}"), range(14)))
    assert [(r.returncode, r.stdout, r.stderr) for r in results] == [(0, f"{i}\n", "") for i in range(14)]


def test_control_socket_path_is_short_enough_for_a_unix_socket(sshd, tmp_path):
    deep = tmp_path / ("d" * 120)
    connection = SSHConnection(sshd.creds(), control_dir=deep)
    assert len(str(connection.control_path)) <= 90
    with connection:
        assert connection.run("echo ok").stdout == "ok\n"


# -- host keys and authentication -----------------------------------------------------------------------------


def test_unknown_host_is_refused_unless_new_host_keys_are_accepted(sshd, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()
    with SSHConnection(sshd.creds(known_hosts=str(known_hosts))) as strict:
        with pytest.raises(HostKeyError, match="accept_new_host_keys=True"):
            strict.check()
    with SSHConnection(sshd.creds(known_hosts=str(known_hosts), accept_new_host_keys=True)) as accepting:
        assert accepting.run("echo in").stdout == "in\n"
    recorded = subprocess.run(
        ["ssh-keygen", "-F", f"[{sshd.host}]:{sshd.port}", "-f", str(known_hosts)], capture_output=True, text=True
    )
    assert recorded.returncode == 0 and sshd.host_public_key.split()[1] in recorded.stdout


def test_changed_host_key_is_refused_even_when_accepting_new_keys(sshd, tmp_path):
    impostor = generate_key(tmp_path / "impostor")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{sshd.host}]:{sshd.port} {impostor.with_suffix('.pub').read_text()}")
    with SSHConnection(sshd.creds(known_hosts=str(known_hosts), accept_new_host_keys=True)) as connection:
        with pytest.raises(HostKeyError, match="CHANGED") as info:
            connection.run("true")
    assert "ssh-keygen" in str(info.value) and f"{sshd.host}:{sshd.port}" in str(info.value)


def test_wrong_key_is_an_authentication_error(sshd, tmp_path):
    stranger = generate_key(tmp_path / "stranger")
    with SSHConnection(sshd.creds(private_key=str(stranger))) as connection:
        with pytest.raises(SSHAuthenticationError, match="authorized_keys"):
            connection.check()


# -- unreachable hosts: clear errors within seconds, never a hang --------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"port": "closed"}, id="closed-port"),
        pytest.param({"proxy_command": "false"}, id="proxy-command-exits"),
        pytest.param({"proxy_command": "sleep 30", "connect_timeout": 1}, id="proxy-command-hangs"),
        pytest.param({"host": "no-such-host.invalid"}, id="unknown-host-name"),
    ],
)
def test_unreachable_host_is_a_connection_error_within_seconds(sshd, overrides):
    if overrides.get("port") == "closed":
        overrides = {"port": free_port()}
    began = time.monotonic()
    with SSHConnection(sshd.creds(**overrides)) as connection:
        with pytest.raises(SSHConnectionError) as info:
            connection.run("true")
    assert time.monotonic() - began < 5
    assert str(connection.creds.port) in str(info.value) or "no-such-host" in str(info.value)


def test_command_running_when_sshd_dies_fails_within_seconds(conn, sshd, echo_port):
    conn.check()
    tunnel = conn.forward(echo_port)
    failure: list[BaseException] = []

    def long_command() -> None:
        try:
            conn.run("sleep 30")
        except BaseException as error:
            failure.append(error)

    runner = threading.Thread(target=long_command)
    runner.start()
    time.sleep(0.5)
    began = time.monotonic()
    try:
        sshd.kill()
        runner.join(timeout=20)
        assert not runner.is_alive(), "run() hung after the server died"
        assert time.monotonic() - began < 5
        assert len(failure) == 1 and isinstance(failure[0], SSHConnectionError)
        assert "lost" in str(failure[0])
        assert not tunnel.is_open()
        tunnel.close()  # the master died with the forward: closing must still not raise
    finally:
        sshd.restart()


def test_command_on_a_host_that_stops_answering_fails_within_the_keepalive_window(conn, sshd):
    conn.check()
    began = time.monotonic()
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(conn.run, "sleep 60", timeout=60)
            time.sleep(0.5)
            sshd.freeze()  # no packet answered, no connection closed: only keepalives notice
            with pytest.raises(SSHConnectionError, match="lost"):
                running.result(timeout=40)
        assert time.monotonic() - began < 25  # ServerAliveInterval 5 s x ServerAliveCountMax 3, plus slack
    finally:
        sshd.restart()


def test_connecting_to_a_host_that_does_not_answer_times_out(sshd):
    sshd.freeze()  # the port accepts TCP connections, but sshd never sends its banner
    try:
        began = time.monotonic()
        with SSHConnection(sshd.creds(connect_timeout=1)) as connection:
            with pytest.raises(SSHConnectionError, match="timed out"):
                connection.check()
        assert time.monotonic() - began < 4
    finally:
        sshd.restart()


def test_run_after_sshd_restart_reconnects_transparently(conn, sshd):
    conn.run("true", check=True)
    sshd.restart()
    assert conn.run("echo back", check=True).stdout == "back\n"


def test_stale_control_socket_of_a_killed_master_is_replaced(conn):
    conn.run("true", check=True)
    (master,) = _processes_mentioning(str(conn.control_path))
    master.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not _gone(master) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert conn.control_path.exists(), "a killed master leaves its socket behind"
    assert conn.run("echo fresh", check=True).stdout == "fresh\n"
    assert conn.is_connected()


# -- rsync ---------------------------------------------------------------------------------------------------


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.txt").write_text("beta\n")
    (root / "skip.log").write_text("noise\n")
    return root


def _sent_files(itemized: str) -> list[str]:
    """Files rsync transferred, from its --itemize-changes output (lines like ``<f+++++++++ a.txt``)."""
    return sorted(line.split(" ", 1)[1] for line in itemized.splitlines() if line.startswith(("<f", ">f")))


def test_rsync_uploads_a_tree_then_sends_only_what_changed(conn, tmp_path):
    source = _tree(tmp_path / "src")
    first = conn.rsync(f"{source}/", "up1/")
    assert _sent_files(first.stdout) == ["a.txt", "skip.log", "sub/b.txt"]
    assert _remote_file(conn, "up1/sub/b.txt") == "beta\n"
    (source / "a.txt").write_text("alpha, changed\n")
    second = conn.rsync(f"{source}/", "up1/")
    assert _sent_files(second.stdout) == ["a.txt"]
    assert _remote_file(conn, "up1/a.txt") == "alpha, changed\n"


def test_rsync_files_from_sends_only_the_listed_files(conn, tmp_path):
    source = _tree(tmp_path / "src")
    result = conn.rsync(f"{source}/", "up2/", files_from=["sub/b.txt"])
    assert _sent_files(result.stdout) == ["sub/b.txt"]
    assert conn.run("cd up2 && find . -type f", check=True).stdout.split() == ["./sub/b.txt"]


def test_rsync_excludes_and_delete(conn, tmp_path):
    source = _tree(tmp_path / "src")
    conn.run("mkdir -p up3 && echo old > up3/stale.txt", check=True)
    conn.rsync(f"{source}/", "up3/", excludes=["*.log"], delete=True)
    assert sorted(conn.run("cd up3 && find . -type f", check=True).stdout.split()) == ["./a.txt", "./sub/b.txt"]


def test_rsync_downloads_from_the_host(conn, tmp_path):
    conn.run("mkdir -p down/inner && echo remote > down/inner/r.txt", check=True)
    conn.rsync("down/", str(tmp_path / "here"), upload=False)
    assert (tmp_path / "here" / "inner" / "r.txt").read_text() == "remote\n"


def test_rsync_of_a_missing_source_is_an_ssh_error_with_rsyncs_message(conn, tmp_path):
    with pytest.raises(SSHError, match="no-such-dir") as info:
        conn.rsync("no-such-dir/", str(tmp_path / "x"), upload=False)
    assert type(info.value) is SSHError


def test_proxy_command_carries_commands_and_rsync(sshd, tmp_path):
    proxy = tmp_path / "proxy script.py"  # a space, to check the quoting through rsync -e
    proxy.write_text(PROXY)
    source = _tree(tmp_path / "src")
    creds = sshd.creds(proxy_command=f"{shlex.quote(sys.executable)} {shlex.quote(str(proxy))} %h %p")
    with SSHConnection(creds) as connection:
        assert connection.run("echo proxied", check=True).stdout == "proxied\n"
        assert _sent_files(connection.rsync(f"{source}/", "up4/").stdout) == ["a.txt", "skip.log", "sub/b.txt"]


# A ProxyCommand: relays its stdin and stdout to host:port.
PROXY = """
import os, socket, sys, threading
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def upstream():
    while data := os.read(0, 65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=upstream, daemon=True).start()
while data := sock.recv(65536):
    os.write(1, data)
"""


# -- tunnels -------------------------------------------------------------------------------------------------


def test_forward_reaches_a_service_on_the_host_until_closed(conn, echo_port):
    with conn.forward(echo_port) as tunnel:
        assert tunnel.remote_port == echo_port and tunnel.local_port != echo_port
        assert tunnel.is_open()
        assert _echo_through(tunnel.local_port) == b"ping"
    assert not tunnel.is_open()
    with pytest.raises(ConnectionRefusedError):
        _echo_through(tunnel.local_port)


def test_forward_to_a_chosen_local_port(conn, echo_port):
    port = free_port()
    with conn.forward(echo_port, local_port=port) as tunnel:
        assert tunnel.local_port == port and _echo_through(port, b"chosen") == b"chosen"


def test_forward_from_a_busy_local_port_is_an_ssh_error(conn, echo_port):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(SSHError, match="already in use"):
            conn.forward(echo_port, local_port=busy.getsockname()[1])


# -- credentials and the interactive command -----------------------------------------------------------------


def test_password_without_sshpass_installed_says_how_to_install_it(sshd, monkeypatch):
    path = [folder for folder in os.environ["PATH"].split(os.pathsep) if not (Path(folder) / "sshpass").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    assert shutil.which("sshpass") is None
    with SSHConnection(sshd.creds(password="secret", private_key=None)) as connection:
        with pytest.raises(SSHError, match="apt-get install sshpass"):
            connection.run("true")


needs_sshpass = pytest.mark.skipif(shutil.which("sshpass") is None, reason="sshpass not installed")


@needs_sshpass
def test_with_a_password_ssh_runs_under_sshpass_and_still_shares_one_master(sshd):
    # the test sshd takes keys only; the key gets in, and the sshpass wrapping must not hang the master
    with SSHConnection(sshd.creds(password="not-asked-for")) as connection:
        assert connection.run("echo through-sshpass", check=True).stdout == "through-sshpass\n"
        assert connection.is_connected()
        assert len(_processes_mentioning(str(connection.control_path))) == 1


@needs_sshpass
def test_password_for_a_host_that_takes_only_keys_says_so(sshd):
    with SSHConnection(sshd.creds(password="secret", private_key=None)) as connection:
        with pytest.raises(SSHAuthenticationError, match="does not take passwords") as info:
            connection.check()
    assert "secret" not in str(info.value)


def test_ssh_creds_dict_round_trips_without_the_password():
    creds = SSHCredentials.from_dict(
        "10.0.0.5",
        {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id", "ssh_port": "2222", "password": "secret",
         "ssh_proxy_command": "ssh -W %h:%p jump", "accept_new_host_keys": True},
    )  # fmt: skip
    assert creds.port == 2222 and creds.password == "secret"
    saved = creds.to_dict()
    assert "password" not in saved and "secret" not in repr(creds)
    assert SSHCredentials.from_dict("10.0.0.5", saved) == SSHCredentials(**{**vars(creds), "password": None})


def test_unknown_ssh_creds_key_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="ssh_usr"):
        SSHCredentials.from_dict("h", {"ssh_usr": "ubuntu"})


def test_interactive_command_is_ssh_t_with_the_same_options(conn, sshd):
    argv = conn.interactive_command()
    assert argv[:2] == ["ssh", "-t"] and argv[-1] == sshd.host
    assert f"ControlPath={conn.control_path}" in argv and str(sshd.port) in argv
    assert "BatchMode=yes" not in argv  # it may prompt for a passphrase
    without_tty = [argv[0], *argv[2:], "echo interactive"]
    ran = subprocess.run(without_tty, capture_output=True, text=True, timeout=30)
    assert ran.stdout == "interactive\n"


def test_a_key_whose_path_holds_percent_signs_and_spaces_is_used_as_written(sshd: SSHServer, tmp_path: Path) -> None:
    folder = tmp_path / "keys 100%h"
    folder.mkdir()
    key = folder / "id%d"
    shutil.copy(sshd.private_key, key)
    key.chmod(0o600)
    creds = sshd.creds()
    with SSHConnection(SSHCredentials(**{**vars(creds), "private_key": str(key)})) as connection:
        assert connection.run("echo ok", check=True).stdout.strip() == "ok"
