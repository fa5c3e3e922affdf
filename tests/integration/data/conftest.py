"""Places data can live, each a real server: this machine, the daemon fixture (sharing this disk, and reached
only through calls), the loopback sshd as an SSH cluster, and moto's S3 server on a free port."""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import runhouse as rh
from runhouse.resources.clusters.ssh import SSHCluster
from runhouse.resources.data.daemon import DaemonSystem
from tests.conftest import free_port
from tests.integration.ssh.conftest import sshd  # noqa: F401 - the sshd fixture, used here too
from tests.support.sshd import SSHServer


@pytest.fixture(autouse=True)
def _saves_stay_in_a_project(in_a_project: Path) -> None:
    """Named data resources are saved when written: into a project of the test's own."""

BUCKET = "rh-test"
_FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Target:
    """Where a test's data goes: ``system=`` to pass, a fresh folder path there, and storage options."""

    system: Any
    root: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digest(folder: rh.Folder) -> dict[str, str]:
    """``{name: sha256}`` of every file of a folder, fetched to this machine in one transfer."""
    with tempfile.TemporaryDirectory() as here:
        local = Path(folder.to("here", path=f"{here}/copy").path)
        return {p.relative_to(local).as_posix(): digest(p.read_bytes()) for p in local.rglob("*") if p.is_file()}


def local_tree(root: Path, files: int = 20, size: int = 5000) -> Path:
    """A folder of ``files`` random files (some in a subfolder) on this machine."""
    root.mkdir(parents=True)
    for i in range(files):
        path = root / ("sub" if i % 3 == 0 else "") / f"f{i}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(size + i))
    return root


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, Any]]:
    """moto's S3 in server mode on a free loopback port, with a bucket; fake AWS credentials in the env."""
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in _FAKE_AWS}
    os.environ.update(_FAKE_AWS)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}"}
    try:
        import s3fs

        s3fs.S3FileSystem(**options).mkdir(BUCKET)
        yield options
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def ssh_cluster(sshd: SSHServer, config_dir: Path) -> Iterator[SSHCluster]:  # noqa: F811
    """The loopback sshd as a cluster; data moves over its SSH connection (no daemon is started)."""
    creds = {
        "ssh_user": sshd.user,
        "ssh_private_key": str(sshd.private_key),
        "ssh_port": sshd.port,
        "known_hosts": str(sshd.known_hosts_with_key(sshd.root / "data_known_hosts")),
    }
    box = rh.cluster(name="data_ssh", ips=[sshd.host], ssh_creds=creds)
    assert isinstance(box, SSHCluster)
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def file_target(tmp_path: Path) -> Target:
    return Target("file", str(tmp_path / "on_file"))


@pytest.fixture
def shared_daemon_target(cluster: rh.Cluster, tmp_path: Path) -> Target:
    return Target(cluster, str(tmp_path / "on_shared_daemon"))


@pytest.fixture
def daemon_target(cluster: rh.Cluster, tmp_path: Path) -> Target:
    return Target(DaemonSystem(cluster, shared_disk=False), str(tmp_path / "on_daemon"))


@pytest.fixture
def ssh_target(ssh_cluster: SSHCluster) -> Target:
    return Target(ssh_cluster, f"data/{uuid.uuid4().hex[:10]}")


@pytest.fixture
def s3_target(s3_server: dict[str, Any]) -> Target:
    return Target("s3", f"{BUCKET}/{uuid.uuid4().hex[:10]}", dict(s3_server))
