"""Fixtures that start real daemons on free ports, each with its own config folder, and always stop them."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runhouse as rh
from runhouse.resources.clusters import local_daemon as daemon


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh RH_CONFIG_DIR for the whole run, for every test: nothing touches the real ~/.rh (nor ~/.ssh:
    clusters brought up write no ``ssh NAME`` entries, RH_SSH_CONFIG=0, except in tests that turn it on with a
    home of their own)."""
    path = tmp_path_factory.mktemp("rhconfig")
    old = os.environ.get("RH_CONFIG_DIR")
    os.environ["RH_CONFIG_DIR"] = str(path)
    os.environ["RH_SSH_CONFIG"] = "0"
    yield path
    if old is None:
        os.environ.pop("RH_CONFIG_DIR", None)
    else:
        os.environ["RH_CONFIG_DIR"] = old


@contextlib.contextmanager
def running_daemon(name: str) -> Iterator[rh.Cluster]:
    """A daemon started on a free port, stopped (with all its workers) on exit."""
    port = free_port()
    daemon.start(port)
    try:
        yield rh.cluster(name=name, host="localhost", server_port=port)
    finally:
        daemon.stop(port)


@pytest.fixture(scope="session")
def cluster(config_dir: Path) -> Iterator[rh.Cluster]:
    """One daemon shared by the tests that do not restart or break it."""
    with running_daemon("test") as box:
        yield box


@pytest.fixture
def own_cluster(config_dir: Path) -> Iterator[rh.Cluster]:
    """A daemon of the test's own, for tests that restart, crash or stop it."""
    with running_daemon("own") as box:
        yield box


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory, config_dir: Path) -> Iterator[Any]:
    """The provisioner "loopback" for on-demand clusters: its machines are loopback sshd hosts; every cluster it
    launched is deleted at the end of the module."""
    from runhouse.resources.clusters.provisioning import register_provisioner
    from tests.support.loopback_provisioner import LoopbackProvisioner

    provisioner = LoopbackProvisioner(tmp_path_factory.mktemp("ondemand"))
    register_provisioner("loopback", lambda: provisioner)
    try:
        yield provisioner
    finally:
        for name in list(provisioner.clusters):
            provisioner.down(name)


@pytest.fixture
def in_a_project(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder is a new git repository of the test's own: what it saves by local name (``~/...``, a
    named blob's write) goes to that repository's rh/ folder, never the checkout the tests run from."""
    import subprocess

    project = tmp_path_factory.mktemp("project")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    monkeypatch.chdir(project)
    return project
