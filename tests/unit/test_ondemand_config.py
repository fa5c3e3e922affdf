"""On-demand clusters without launching anything: arguments, defaults, configs, and adopting found machines."""

from __future__ import annotations

import pytest

import runhouse as rh
from runhouse import config
from runhouse.resources.clusters.ondemand import OnDemandCluster
from runhouse.resources.clusters.provisioning import UP, Machines


def test_machines_give_the_ssh_creds_to_reach_them():
    machines = Machines(UP, ("10.0.0.5",), "ubuntu", "/keys/k", 2222, ssh_proxy_command="kubectl port-forward %h")
    assert machines.ssh_creds() == {"ssh_port": 2222, "ssh_user": "ubuntu", "ssh_private_key": "/keys/k",
                                    "ssh_proxy_command": "kubectl port-forward %h"}
    assert Machines(UP, ("10.0.0.5",)).ssh_creds() == {"ssh_port": 22}


def test_found_machines_replace_what_came_from_the_old_ones_and_keep_the_rest():
    gpu = rh.ondemand_cluster(name="gpu", ssh_creds={"ssh_proxy_command": "old-proxy %h", "ssh_user": "old"})
    known_hosts = gpu.ssh_creds["known_hosts"]
    gpu._adopt(Machines(UP, ("10.0.0.7",), "ubuntu", "/keys/k", 22), fresh=False)
    assert gpu.ips == ["10.0.0.7"] and gpu.host == "10.0.0.7"
    assert gpu.ssh_creds == {"known_hosts": known_hosts, "ssh_port": 22, "ssh_user": "ubuntu",
                             "ssh_private_key": "/keys/k"}
    assert gpu.creds.user == "ubuntu" and gpu.creds.proxy_command is None


def test_the_provisioners_name_for_the_machines_survives_saving_under_an_address():
    gpu = rh.ondemand_cluster(name="~/team/gpu", instance_type="A10G:1")
    assert gpu.launch_request.cluster_name == "gpu"
    again = rh.Cluster.from_config({**gpu.config(), "name": "~/team/gpu"})
    assert isinstance(again, OnDemandCluster) and again.launch_request == gpu.launch_request


def test_defaults_come_from_rh_configs(monkeypatch):
    values = {"default_provider": "gcp", "use_spot": True, "default_autostop": 45}
    monkeypatch.setattr(config.configs, "get", lambda key, default=None: values.get(key, default))
    gpu = rh.ondemand_cluster(name="gpu")
    assert (gpu.launch_request.provider, gpu.launch_request.use_spot, gpu.autostop_mins) == ("gcp", True, 45)
    explicit = rh.ondemand_cluster(name="gpu", provider="aws", use_spot=False, autostop_mins=-1)
    assert (explicit.launch_request.provider, explicit.launch_request.use_spot, explicit.autostop_mins) == (
        "aws", False, -1)


def test_a_handle_launches_nothing_and_says_how_to():
    gpu = rh.ondemand_cluster(name="gpu", instance_type="A10G:1")
    assert gpu.host.startswith("pending-launch") and gpu.config()["ips"] == gpu.ips
    with pytest.raises(ValueError, match="needs a name"):
        rh.ondemand_cluster(name="")
