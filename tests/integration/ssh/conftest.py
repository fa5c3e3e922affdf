"""The SSH tests' servers: real OpenSSH servers on free loopback ports (see tests/support/sshd.py), one per
session each, with their own host key, client key and home folder.

Nothing the tests do over SSH touches the real home folder: sessions get ``HOME`` (and ``RH_CONFIG_DIR``)
in a temporary folder, and start there (sshd itself would start them in the account's home folder).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sshd import SSHD, SSHServer


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory, config_dir: Path) -> Iterator[SSHServer]:
    """A running sshd for the whole session; tests that kill it restart it before they end."""
    if not SSHD.exists():
        pytest.skip(f"{SSHD} not found: install the OpenSSH server (`apt-get install openssh-server`)")
    # sshd refuses to start without its privilege separation folder; Debian creates it only at boot.
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    server = SSHServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def second_sshd(sshd: SSHServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """Another running sshd (its own port, keys and home folder) for tests that need two hosts; ``sshd`` first
    checks that OpenSSH is installed and prepares its folder."""
    server = SSHServer(tmp_path_factory.mktemp("sshd2"))
    server.start()
    try:
        yield server
    finally:
        server.kill()
