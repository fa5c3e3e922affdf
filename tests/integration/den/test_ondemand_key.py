"""A saved on-demand cluster names its SSH key's secret in Den (never the key): another machine logged in to the
same account fetches the key and reaches the running machines without launching."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import runhouse as rh
from runhouse.resources.clusters.ondemand import OnDemandCluster
from tests.conftest import free_port
from tests.integration.den.conftest import DenUser


def test_another_machine_reaches_the_running_machines_with_the_key_from_den(alice: DenUser, loopback, tmp_path):
    box = rh.ondemand_cluster(name="od-key", provisioner="loopback", server_port=free_port(), autostop_mins=-1)
    box.up_if_not()
    try:
        key = Path(box.ssh_creds["ssh_private_key"])
        box.save()
        saved = rh.cluster(name=box.rns_address).config()
        assert saved["ssh_key_secret"] == "ssh-key-od-key"
        assert key.read_text().strip() not in json.dumps(saved)  # the key itself is never in the config
        launches = len(loopback.launches)
        # Another machine: the key's path does not exist there.
        other = rh.Cluster.from_config(
            {**saved, "ssh_creds": {**saved["ssh_creds"], "ssh_private_key": str(tmp_path / "not-here")}}
        )
        assert isinstance(other, OnDemandCluster)
        assert other.run(["echo reached"], stream_logs=False)[0][1] == "reached\n"
        fetched = Path(other.ssh_creds["ssh_private_key"])
        assert fetched.read_text() == key.read_text()
        assert stat.S_IMODE(fetched.stat().st_mode) == 0o600
        assert len(loopback.launches) == launches  # reached, not launched again
        other.close()
    finally:
        box.teardown()
