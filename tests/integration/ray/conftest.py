"""Multi-node fixtures: each "node" is its own sshd on a loopback alias (127.0.0.2, 127.0.0.3, ...), all on the
same port, each with its own host key, home folder and ``RH_CONFIG_DIR`` (see tests/support/sshd.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sshd import SSHD, LoopbackNodes

NODE_COUNT = 3


@pytest.fixture(scope="session")
def loopback_nodes(tmp_path_factory: pytest.TempPathFactory, config_dir: Path) -> Iterator[LoopbackNodes]:
    """Three running sshd nodes on 127.0.0.2-127.0.0.4 for the whole session, logged into with one key."""
    if not SSHD.exists():
        pytest.skip(f"{SSHD} not found: install the OpenSSH server (`apt-get install openssh-server`)")
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.2", 0))
        except OSError as exc:
            pytest.skip(f"loopback alias 127.0.0.2 is not usable here ({exc}); Linux routes all of 127/8 to lo")
    # sshd refuses to start without its privilege separation folder; Debian creates it only at boot.
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    with LoopbackNodes(NODE_COUNT, tmp_path_factory.mktemp("nodes")) as nodes:
        yield nodes
