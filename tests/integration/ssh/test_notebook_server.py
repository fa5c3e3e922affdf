"""cluster.notebook() on an SSH cluster (a real sshd on a loopback port): JupyterLab in the cluster's default env,
reached through the cluster's SSH tunnel with its token only, and stopped with its kernels and the tunnel."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import psutil
import pytest

import runhouse as rh
from runhouse.resources.clusters.notebook import jupyterlab_probe
from tests.conftest import free_port


def jupyterlab_processes(port: int) -> list[psutil.Process]:
    """The JupyterLab servers listening on ``port`` (this machine is also the loopback host) and what they run."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "jupyterlab" in cmdline and f"--port={port}" in cmdline:
            found += [proc, *proc.children(recursive=True)]
    return found


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def api(port: int, path: str, token: str | None, body: bytes | None = None) -> tuple[int, dict]:
    """JupyterLab's answer at ``path`` through the local port: status code and JSON body."""
    headers = {"Authorization": f"token {token}"} if token is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.fixture(scope="module")
def ssh_box(sshd, config_dir):
    creds = {
        "ssh_user": sshd.user,
        "ssh_private_key": str(sshd.private_key),
        "ssh_port": sshd.port,
        "known_hosts": str(sshd.known_hosts_with_key(sshd.root / "notebook_known_hosts")),
    }
    box = rh.cluster(name="notebook_box", ips=[sshd.host], ssh_creds=creds, server_port=free_port()).up_if_not()
    try:
        yield box
    finally:
        box.teardown()


def test_jupyterlab_answers_through_the_tunnel_with_its_token_only_then_stops_with_its_kernels(ssh_box):
    python, has_jupyterlab = jupyterlab_probe(ssh_box, None)
    assert not has_jupyterlab, "the host's runhouse venv (the default env's interpreter) starts without JupyterLab"
    local_port = free_port()
    with ssh_box.notebook(port_forward=local_port) as notebook:
        assert jupyterlab_probe(ssh_box, None) == (python, True), "installed into the env's interpreter"
        assert notebook.url == f"http://127.0.0.1:{local_port}/lab?token={notebook.token}"

        code, status = api(local_port, "/api/status", notebook.token)
        assert code == 200 and status["kernels"] == 0
        assert api(local_port, "/api/status", None)[0] in (401, 403)
        assert api(local_port, "/api/status", "not-the-token")[0] in (401, 403)

        code, kernel = api(local_port, "/api/kernels", notebook.token, body=b"{}")
        assert code == 201 and kernel["name"] == "python3"
        processes = jupyterlab_processes(notebook.remote_port)
        kernels = [p for p in processes if "ipykernel_launcher" in " ".join(p.cmdline())]
        assert [k.cmdline()[0] for k in kernels] == [python], "the kernel runs in the env's interpreter"
        assert notebook.token not in repr(notebook)
    assert not listening(local_port) and not listening(notebook.remote_port)
    assert alive(processes) == []
    notebook.close()  # a second close does nothing
