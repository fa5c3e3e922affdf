"""The whole cluster API through a real sshd on a loopback port: bring-up, sync, calls, faults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import runhouse as rh
from runhouse.errors import (
    BadRequestError,
    ClusterVersionError,
    HostKeyError,
    SSHAuthenticationError,
    SSHConnectionError,
)
from runhouse.resources.clusters.ssh import SSHCluster
from tests.conftest import free_port
from tests.integration import funcs


def _creds(sshd, **overrides):
    creds = {
        "ssh_user": sshd.user,
        "ssh_private_key": str(sshd.private_key),
        "ssh_port": sshd.port,
        "known_hosts": str(sshd.known_hosts_with_key(sshd.root / "cluster_known_hosts")),
    }
    return {**creds, **overrides}


def _remote_processes(sshd):
    """Processes started from the remote side's home folder (its runhouse venv)."""
    home = str(sshd.home)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(home in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def ssh_box(sshd, config_dir):
    port = free_port()
    box = rh.cluster(name="ssh_box", ips=[sshd.host], ssh_creds=_creds(sshd), server_port=port)
    began = time.monotonic()
    box.up_if_not()
    box.first_bring_up_s = time.monotonic() - began
    try:
        yield box
    finally:
        box.teardown()
        for proc in _remote_processes(sshd):
            proc.kill()


def test_first_bring_up_installs_and_an_up_cluster_connects_fast(ssh_box, sshd):
    print(f"first bring-up took {ssh_box.first_bring_up_s:.1f} s")
    again = rh.cluster(name="again", ips=[sshd.host], ssh_creds=_creds(sshd), server_port=ssh_box.server_port)
    began = time.monotonic()
    again.up_if_not()
    assert time.monotonic() - began < 1.0
    assert again.keys() is not None
    again.close()


def test_every_call_type_works_over_ssh(ssh_box, capfd):
    add = rh.function(funcs.add).to(ssh_box)
    assert add(1, 2) == 3
    assert rh.get(add.remote(2, 3)) == 5
    assert add.map([1, 2], [10, 20]) == [11, 22]
    counter = rh.module(funcs.Counter).to(ssh_box)(start=1, name="ssh_counter")
    assert counter.increment() == 2 and counter.value == 2
    rh.function(funcs.shout).to(ssh_box)("over-ssh")
    assert "(shout) over-ssh line 0" in capfd.readouterr().out
    with pytest.raises(ValueError, match="remote says no"):
        rh.function(funcs.raise_value_error).to(ssh_box)()
    ssh_box.put("ssh_key", {"a": [1, 2]})
    assert ssh_box.get("ssh_key") == {"a": [1, 2]}
    assert ssh_box.run(["echo hi"], stream_logs=False) == [(0, "hi\n", "")]
    assert ssh_box.run_python(["print(6 * 7)"], stream_logs=False)[0][1] == "42\n"
    big = b"x" * 5_000_000  # large payloads travel inline through the tunnel (no shared memory)
    assert rh.function(funcs.length).to(ssh_box)(big) == 5_000_000


def test_code_is_synced_once_and_skipped_when_unchanged(ssh_box):
    rh.function(funcs.add).to(ssh_box)
    synced = ssh_box._shipper.synced
    assert synced, "the repo was synced to the host"
    began = time.monotonic()
    rh.function(funcs.add).to(ssh_box)
    assert time.monotonic() - began < 0.5
    assert ssh_box._shipper.synced == synced
    remote_repo = next(iter(ssh_box._shipper.synced))
    assert remote_repo


def _save_in_project(box, name, project):
    """Save ``box`` in the local store of a new git repo at ``project``."""
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        box.save(name)
    finally:
        os.chdir(cwd)


def test_saved_cluster_reconnects_in_a_new_process_without_reinstalling(ssh_box, tmp_path):
    rh.function(funcs.add).to(ssh_box)
    _save_in_project(ssh_box, "~/ssh_box", tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import time, runhouse as rh
            box = rh.cluster(name="ssh_box")
            began = time.monotonic()
            print(box.get("add")(20, 22, stream_logs=False), time.monotonic() - began < 5)
        """)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["42", "True"]
    assert "installing" not in out.stdout + out.stderr


def test_dropped_tunnel_is_reopened_between_calls(ssh_box):
    add = rh.function(funcs.add).to(ssh_box)
    ssh_box._tunnel.close()
    assert add(5, 5) == 10


def test_killed_remote_daemon_is_restarted_by_the_next_call(ssh_box):
    add = rh.function(funcs.add).to(ssh_box)
    ssh_box.ssh_connection.run(f"{ssh_box._python()} -m runhouse.cli stop --port {ssh_box.server_port}", timeout=60)
    assert add(1, 1) == 2  # registry restored on the host: no redeploy needed


def test_run_setup_runs_once_per_host(ssh_box):
    first = ssh_box.run_setup(["echo setting-up"])
    assert first and first[0][0] == 0
    assert ssh_box.run_setup(["echo setting-up"]) == []


def test_ssh_tunnel_is_a_context_manager(ssh_box):
    with ssh_box.ssh_tunnel(remote_port=ssh_box.server_port) as tunnel:
        from runhouse.resources.clusters import local_daemon as daemon

        assert daemon.health(tunnel.local_port, "127.0.0.1", timeout=2) is not None
    assert daemon.health(tunnel.local_port, "127.0.0.1", timeout=0.5) is None


def test_version_mismatch_without_upgrade_is_a_clear_error(ssh_box, sshd, monkeypatch):
    import runhouse.resources.clusters.ssh as module

    monkeypatch.setattr(module, "build_id", lambda: "9.9.9+different")
    strict = rh.cluster(ips=[sshd.host], ssh_creds=_creds(sshd), server_port=ssh_box.server_port,
                        allow_upgrade=False)
    with pytest.raises(ClusterVersionError, match="9.9.9"):
        strict.up_if_not()
    strict.close()


def test_wrong_key_wrong_port_and_changed_host_key_fail_clearly(sshd, tmp_path):
    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(other_key)], check=True)
    wrong_key = SSHCluster(ips=[sshd.host], ssh_creds=_creds(sshd, ssh_private_key=str(other_key)))
    with pytest.raises(SSHAuthenticationError):
        wrong_key.up_if_not()
    wrong_port = SSHCluster(ips=[sshd.host], ssh_creds=_creds(sshd, ssh_port=free_port()))
    began = time.monotonic()
    with pytest.raises(SSHConnectionError):
        wrong_port.up_if_not()
    assert time.monotonic() - began < 15
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd.host}]:{sshd.port} {other_key.with_suffix('.pub').read_text().strip()}\n")
    changed = SSHCluster(ips=[sshd.host], ssh_creds=_creds(sshd, known_hosts=str(known)), accept_new_host_keys=True)
    with pytest.raises(HostKeyError, match="(?i)chang"):
        changed.up_if_not()


def test_config_round_trip_keeps_no_password(sshd):
    box = SSHCluster(name="cfg_box", ips=[sshd.host], ssh_creds=_creds(sshd, password="secret"))
    config = box.config()
    assert "secret" not in str(config)
    rebuilt = rh.Cluster.from_config(config)
    assert isinstance(rebuilt, SSHCluster) and rebuilt.ips == [sshd.host] and rebuilt.server_port == box.server_port


def test_repo_requirements_are_installed_before_deploying(ssh_box, tmp_path, monkeypatch):
    repo = tmp_path / "reqs_repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "requirements.txt").write_text("six==1.16.0\n")
    (repo / "uses_six.py").write_text("def six_version():\n    import six\n    return six.__version__\n")
    monkeypatch.syspath_prepend(str(repo))
    import uses_six

    assert rh.function(uses_six.six_version).to(ssh_box)() == "1.16.0"


def test_daemon_that_fails_to_start_on_the_host_reports_its_log(sshd):
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        box = SSHCluster(ips=[sshd.host], ssh_creds=_creds(sshd), server_port=port)
        from runhouse.errors import DaemonStartError

        with pytest.raises(DaemonStartError, match="(?i)address already in use|exited"):
            box.up_if_not()
        box.close()


def test_unknown_host_key_can_be_accepted_at_a_prompt(sshd, tmp_path, monkeypatch):
    import runhouse.resources.clusters.ssh as module

    questions = []
    monkeypatch.setattr(module, "ask_yes_no", lambda question: questions.append(question) or True)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    empty = tmp_path / "known_hosts"
    empty.touch()
    box = SSHCluster(ips=[sshd.host], ssh_creds=_creds(sshd, known_hosts=str(empty)))
    box._connect()
    assert questions and "not in" in questions[0]
    assert empty.read_text().strip(), "the accepted key was recorded"
    box.close()


def test_tls_connection_pins_the_daemons_certificate(ssh_box, sshd):
    port = free_port()
    box = rh.cluster(ips=[sshd.host], ssh_creds=_creds(sshd), server_port=port, server_connection_type="tls")
    try:
        box.up_if_not()
        assert box._tunnel is None, "TLS clusters are reached directly, not through a tunnel"
        assert rh.function(funcs.add).to(box)(2, 2) == 4
        import http.client
        import ssl

        plain = http.client.HTTPConnection(sshd.host, port, timeout=5)  # no TLS: refused by the server
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            plain.request("GET", "/health")
            plain.getresponse().read()
        stranger = ssl.create_default_context()  # does not trust the self-signed certificate
        from runhouse.resources.clusters import local_daemon as daemon

        assert daemon.health(port, sshd.host, timeout=2, ssl_context=stranger) is None
    finally:
        box.teardown()


def test_status_and_restart_server_over_ssh(ssh_box):
    counter = rh.module(funcs.Counter).to(ssh_box)(start=9, name="ssh_restart_counter")
    counter.increment()
    before = ssh_box.status()["pid"]
    ssh_box.restart_server()
    assert ssh_box.status()["pid"] != before
    assert counter.value == 9  # re-created from its init args on the restarted daemon


def test_a_single_node_cluster_starts_no_ray(ssh_box, sshd):
    rh.function(funcs.add).to(ssh_box).map([1, 2], [3, 4])
    status = ssh_box.status()
    assert [n["index"] for n in status["nodes"]] == [0]
    assert not (sshd.home / ".rh" / "ray").exists()
    assert not [p for p in _remote_processes(sshd) if "ray" in " ".join(p.cmdline())]


def test_a_placement_on_a_single_node_cluster_names_its_one_node(ssh_box):
    rh.env(name="on_head", node=0).to(ssh_box)
    with pytest.raises(BadRequestError, match="names no node"):
        rh.env(name="elsewhere", node=1).to(ssh_box)
    with pytest.raises(BadRequestError, match="no node has"):
        rh.env(name="gpu", compute={"TPU": 1}).to(ssh_box)


def test_runhouse_ssh_opens_a_shell_on_a_saved_cluster(ssh_box, tmp_path):
    _save_in_project(ssh_box, "~/shell_box", tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "runhouse.cli", "ssh", "shell_box"], input="echo hello-from-$((6*7))\nexit\n",
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert "hello-from-42" in out.stdout, out.stderr


def test_the_wheel_shipped_to_hosts_holds_exactly_this_build(tmp_path, monkeypatch):
    import zipfile

    from runhouse.resources.clusters.code import local_wheel
    from runhouse.version import PACKAGE_DIR

    checkout = PACKAGE_DIR.parent
    if not (checkout / "pyproject.toml").exists():
        pytest.skip("runhouse is installed from a wheel here, not run from a checkout")
    # What setuptools leaves in a checkout's build/ after a module is deleted must not reach the wheel.
    stale = checkout / "build" / "lib" / "runhouse" / "transport" / "rh_test_deleted_module.py"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("GONE = True\n")
    monkeypatch.setenv("RH_CONFIG_DIR", str(tmp_path / "rh"))  # an empty wheel cache
    try:
        wheel = local_wheel()
    finally:
        stale.unlink()
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("runhouse/")}
    here = {
        str(path.relative_to(checkout))
        for path in PACKAGE_DIR.rglob("*")
        if path.suffix in (".py", ".json", ".typed", ".html", ".css") and "__pycache__" not in path.parts
    }
    assert shipped == here


def test_a_cluster_you_bring_autostops_with_its_own_stop_command(sshd, tmp_path):
    marker = sshd.home / "autostopped"
    box = rh.cluster(name="ssh_autostop", ips=[sshd.host], ssh_creds=_creds(sshd), server_port=free_port(),
                     autostop_mins=1 / 60, autostop_command=f"touch {marker}")
    assert box.config()["autostop_mins"] == 1 / 60
    try:
        box.up_if_not()
        assert box.status()["autostop"]["command"] == f"touch {marker}"
        deadline = time.monotonic() + 30
        while not (marker.exists() and not box.is_up()):
            assert time.monotonic() < deadline, "the idle daemon did not run its stop command and stop"
            time.sleep(0.3)
    finally:
        box.teardown()


def test_bring_up_shows_each_step_and_quiet_mode_hides_them(ssh_box, sshd, capfd, monkeypatch):
    port = free_port()
    box = rh.cluster(name="steps", ips=[sshd.host], ssh_creds=_creds(sshd), server_port=port)
    try:
        box.up_if_not()
        err = capfd.readouterr().err
        assert f"✓ connect to {sshd.host}:{sshd.port}" in err
        assert f"✓ start the daemon on {sshd.host}" in err
        assert "install runhouse" not in err, "the build is installed already: no install step"
    finally:
        box.teardown()
    monkeypatch.setenv("RH_QUIET", "1")
    quiet = rh.cluster(name="steps", ips=[sshd.host], ssh_creds=_creds(sshd), server_port=port)
    try:
        quiet.up_if_not()
        captured = capfd.readouterr()
        assert "✓" not in captured.err + captured.out
    finally:
        quiet.teardown()
