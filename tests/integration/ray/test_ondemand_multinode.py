"""Two on-demand machines made one Ray cluster, for real, with the loopback provisioner: launch -> Ray bring-up
-> a map over both -> idle -> autostop stops both machines (everything on them dies) -> the next map launches
them again -> teardown."""

from __future__ import annotations

import time

import pytest

import runhouse as rh
from runhouse.resources.clusters.ondemand import OnDemandRayCluster
from runhouse.resources.clusters.provisioning import STOPPED
from tests.conftest import free_port
from tests.integration.ray import ray_funcs

NODE_RESOURCES = {"num_cpus": 1, "memory": 500_000_000, "object_store_memory": 100_000_000}


@pytest.mark.timeout(600)  # two Ray bring-ups, the first with installs
def test_two_machines_launch_spread_autostop_and_come_back(loopback):
    pair = rh.ondemand_cluster(name="od-pair", num_instances=2, instance_type="A10G:1", provisioner="loopback",
                               server_port=free_port(), ray_port=46381, node_resources=NODE_RESOURCES,
                               autostop_mins=-1)
    assert isinstance(pair, OnDemandRayCluster)
    pair.up_if_not()
    nodes = loopback.clusters["od-pair"]
    folders = {str(home / ".rh") for home in nodes.homes}
    assert [n["alive"] for n in pair.status()["nodes"]] == [True, True]
    where = rh.function(ray_funcs.where).to(pair)
    assert {folder for _, folder in where.map(range(8))} == folders
    launches = len(loopback.launches)

    pair.keep_warm(autostop_mins=1 / 60)
    deadline = time.monotonic() + 60
    while loopback.status("od-pair").state != STOPPED:
        assert time.monotonic() < deadline, "autostop did not stop the machines"
        time.sleep(0.5)
    pair.close()

    results = where.map(range(8))  # launches the machines again: Ray on both, the daemon, the pool
    assert [x for x, _ in results] == list(range(8))
    assert len(loopback.launches) == launches + 1
    assert [n["alive"] for n in pair.status()["nodes"]] == [True, True]
    pair.keep_warm()
    pair.teardown()
    assert loopback.status("od-pair") is None
