"""cluster.notebook() on an SSH cluster (a real sshd on a loopback port): JupyterLab in the cluster's default env,
reached through the cluster's SSH tunnel with its token only, and stopped with its kernels and the tunnel."""

from __future__ import annotations

import pytest

import runhouse as rh
from runhouse.resources.clusters.notebook import jupyterlab_probe
from tests.conftest import free_port
from tests.support.jupyter import alive, api, jupyterlab_processes, listening


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
