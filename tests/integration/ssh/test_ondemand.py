"""An on-demand cluster's whole lifecycle, for real, with a provisioner whose "machines" are loopback sshd hosts:
launch -> bring-up -> calls -> idle -> autostop stops the machines -> next use launches them again -> teardown."""

from __future__ import annotations

import time

import pytest

import runhouse as rh
from runhouse.errors import ProvisioningError
from runhouse.resources.clusters.ondemand import OnDemandCluster, OnDemandRayCluster
from runhouse.resources.clusters.provisioning import STOPPED, UP
from tests.conftest import free_port
from tests.integration import funcs


@pytest.fixture(autouse=True)
def _saves_stay_in_a_project(in_a_project):
    """Clusters saved here go to a project of the test's own."""


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def test_lifecycle_launch_call_idle_autostop_relaunch_teardown(loopback):
    gpu = rh.ondemand_cluster(name="od-one", instance_type="A10G:1", provider="aws", provisioner="loopback",
                              server_port=free_port(), autostop_mins=-1)
    assert isinstance(gpu, OnDemandCluster)
    assert gpu.status()["state"] is None and not gpu.is_up()  # nothing launched by a handle or a status
    gpu.up_if_not()
    assert loopback.launches[-1].instance_type == "A10G:1" and loopback.launches[-1].provider == "aws"
    assert gpu.is_up() and gpu.status()["state"] == UP
    add = rh.function(funcs.add).to(gpu)
    assert add(1, 2) == 3
    gpu.save()
    # From anywhere: the saved config reconnects to the running machines without launching.
    launches = len(loopback.launches)
    again = rh.cluster(name="od-one")
    assert isinstance(again, OnDemandCluster) and again.ips == gpu.ips
    assert again.run(["echo hi"], stream_logs=False)[0][1] == "hi\n"
    assert len(loopback.launches) == launches
    again.close()
    # Idle for autostop_mins: the daemon runs the provisioner's stop action; the machines stop.
    gpu.keep_warm(autostop_mins=1 / 60)
    assert loopback.autostops[-1] == ("od-one", 1 / 60, False)
    _wait_for(lambda: loopback.status("od-one").state == STOPPED, 30, "autostop stopped the machines")
    gpu.close()
    # The next use launches them again (same disks: nothing to install), and calls work.
    assert add(2, 3) == 5
    assert len(loopback.launches) == launches + 1
    gpu.keep_warm()
    gpu.teardown()
    assert loopback.status("od-one") is None
    assert rh.cluster(name="od-one").config()["instance_type"] == "A10G:1"  # the saved config stays


def test_a_busy_on_demand_cluster_never_stops(loopback):
    box = rh.ondemand_cluster(name="od-busy", instance_type="m5.xlarge", provisioner="loopback",
                              server_port=free_port(), autostop_mins=0.5 / 60)
    fn = rh.function(funcs.slow_pid).to(box)
    fn(3.0)  # six times the idle time, all in one call
    assert loopback.status("od-busy").state == UP
    assert box.run(["sleep 2; echo ok"], stream_logs=False)[0][1] == "ok\n"
    assert loopback.status("od-busy").state == UP
    _wait_for(lambda: loopback.status("od-busy").state == STOPPED, 30, "autostop once idle")
    box.teardown()


def test_bad_arguments_fail_before_anything_launches(loopback):
    with pytest.raises(ValueError, match="num_instances"):
        rh.ondemand_cluster(name="bad", num_instances=0, provisioner="loopback")
    with pytest.raises(ValueError, match="autostop_mins"):
        rh.ondemand_cluster(name="bad", autostop_mins="soon", provisioner="loopback")
    with pytest.raises(ProvisioningError, match="no provisioner named"):
        rh.ondemand_cluster(name="bad", provisioner="nowhere").up_if_not()
    with pytest.raises(ValueError, match="needs a name"):
        rh.cluster(instance_type="A10G:1")


def test_two_instances_make_a_multinode_cluster_config(loopback):
    pair = rh.ondemand_cluster(name="od-pair", num_instances=2, instance_type="A10G:1", provisioner="loopback")
    assert isinstance(pair, OnDemandRayCluster)
    assert isinstance(rh.Cluster.from_config(pair.config()), OnDemandRayCluster)
    assert rh.cluster(name="od-pair2", instance_type="A10G:1", num_instances=2).config()["num_instances"] == 2


def test_cli_status_and_down_of_a_saved_on_demand_cluster(loopback):
    from typer.testing import CliRunner

    from runhouse.cli import app

    box = rh.ondemand_cluster(name="od-cli", provisioner="loopback", server_port=free_port(), autostop_mins=-1)
    box.save()
    runner = CliRunner()
    shown = runner.invoke(app, ["status", "od-cli"])
    assert shown.exit_code == 0 and "not launched" in shown.output
    box.up_if_not()
    shown = runner.invoke(app, ["status", "od-cli"])
    assert shown.exit_code == 0 and "UP" in shown.output and "runhouse daemon" in shown.output
    gone = runner.invoke(app, ["down", "od-cli"])
    assert gone.exit_code == 0 and "od-cli is down" in gone.output
    assert loopback.status("od-cli") is None
    missing = runner.invoke(app, ["down", "no-such-cluster"])
    assert missing.exit_code == 1 and "Traceback" not in missing.output
