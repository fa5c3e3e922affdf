"""Placing envs on nodes: the spec fields clients send, the daemon's choice of node, and the multi-node
cluster's own checks (no cluster is started here)."""

from __future__ import annotations

import pytest

import runhouse as rh
from runhouse.errors import BadRequestError
from runhouse.resources.clusters.ray import RayCluster
from runhouse.server.backend import NodeInfo, choose_node
from runhouse.server.envs import EnvSpec

NODES = [
    NodeInfo("10.0.0.5", 0, True, {"CPU": 4.0}),
    NodeInfo("10.0.0.6", 1, True, {"CPU": 8.0, "GPU": 2.0}),
    NodeInfo("10.0.0.7", 2, False, {"CPU": 8.0, "GPU": 1.0}),
]


def test_node_and_compute_round_trip_in_an_env_spec():
    spec = EnvSpec.from_dict({"name": "trainer", "node": 1, "compute": {"GPU": 1, "CPU": 2.5}})
    assert spec.node == 1 and dict(spec.compute) == {"GPU": 1.0, "CPU": 2.5}
    assert EnvSpec.from_dict(spec.to_dict()) == spec
    assert EnvSpec.from_dict({"name": "by_ip", "node": "10.0.0.6"}).node == "10.0.0.6"


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"node": -1}, "start at 0"),
        ({"node": True}, "index into the cluster's ips"),
        ({"node": 1.5}, "index into the cluster's ips"),
        ({"node": ""}, "name a node by its ip"),
        ({"node": "10.0.0.6\n"}, "name a node by its ip"),
        ({"compute": ["GPU"]}, "compute must map"),
        ({"compute": {"GPU": 0}}, "positive number"),
        ({"compute": {"GPU": -1}}, "positive number"),
        ({"compute": {"GPU": float("inf")}}, "positive number"),
        ({"compute": {"GPU": "1"}}, "positive number"),
        ({"compute": {"GPU": True}}, "positive number"),
        ({"compute": {"": 1}}, "non-empty strings"),
    ],
)
def test_bad_placements_are_refused_saying_what_to_send(fields, says):
    with pytest.raises(BadRequestError, match=says):
        EnvSpec.from_dict({"name": "e", **fields})


def test_an_env_goes_to_the_node_it_names_or_the_first_live_one_with_its_compute():
    assert choose_node(EnvSpec("e"), NODES).ip == "10.0.0.5"
    assert choose_node(EnvSpec("e", node=1), NODES).ip == "10.0.0.6"
    assert choose_node(EnvSpec("e", node="10.0.0.6"), NODES).index == 1
    assert choose_node(EnvSpec("e", compute=(("GPU", 1.0),)), NODES).ip == "10.0.0.6"
    assert choose_node(EnvSpec("e", compute=(("CPU", 6.0),)), NODES).ip == "10.0.0.6"


@pytest.mark.parametrize(
    "spec, says",
    [
        (EnvSpec("e", node=3), "names no node of this cluster; use an index or an ip of: 0: 10.0.0.5"),
        (EnvSpec("e", node="10.0.0.9"), "names no node"),
        (EnvSpec("e", node=2), "is not alive"),
        (EnvSpec("e", node=0, compute=(("GPU", 1.0),)), "not compute"),
        (EnvSpec("e", compute=(("GPU", 4.0),)), "no node has compute"),
        (EnvSpec("e", compute=(("TPU", 1.0),)), "10.0.0.7 \\(dead\\)"),
    ],
)
def test_a_placement_no_node_meets_says_what_the_nodes_have(spec, says):
    with pytest.raises(BadRequestError, match=says):
        choose_node(spec, NODES)


def test_several_ips_make_a_ray_cluster_whose_config_round_trips():
    c = rh.cluster(name="trio", ips=["10.0.0.5", "10.0.0.6"], ssh_creds={"ssh_user": "ubuntu"},
                   ray_port=7000, node_resources={"num_cpus": 2})
    assert isinstance(c, RayCluster) and c.ray_address == "10.0.0.5:7000"
    again = rh.Cluster.from_config(c.config())
    assert isinstance(again, RayCluster) and again.config() == c.config()
    assert isinstance(rh.cluster(name="one", ips=["10.0.0.5"]), rh.Cluster)
    assert not isinstance(rh.cluster(name="one", ips=["10.0.0.5"]), RayCluster)


@pytest.mark.parametrize(
    "kwargs, error, says",
    [
        ({"ips": "10.0.0.5"}, TypeError, "list of addresses"),
        ({"ips": ["10.0.0.5", "10.0.0.5"]}, ValueError, "lists a node twice"),
        ({"ips": ["10.0.0.5", "10.0.0.6"], "node_resources": {"cpus": 2}}, ValueError, "unknown node_resources"),
        ({"ips": ["10.0.0.5", "10.0.0.6"], "ray_port": 0}, ValueError, "ray_port"),
    ],
)
def test_bad_multinode_arguments_fail_before_connecting(kwargs, error, says):
    with pytest.raises(error, match=says):
        rh.cluster(name="bad", **kwargs)


def test_a_node_is_named_by_index_or_ip():
    c = rh.cluster(name="trio", ips=["10.0.0.5", "10.0.0.6", "10.0.0.7"])
    assert c.node_index(2) == 2 and c.node_index("10.0.0.6") == 1
    for bad in (3, -1, "10.0.0.8", True):
        with pytest.raises(ValueError, match="names no node"):
            c.node_index(bad)


def test_env_placement_is_part_of_the_env_and_its_config():
    trainer = rh.env(name="trainer", compute={"GPU": 1})
    assert trainer.spec()["compute"] == {"GPU": 1} and trainer.spec()["node"] is None
    assert rh.Env.from_config(trainer.config()).spec() == trainer.spec()
    assert rh.env(node=2).name != rh.env(node=1).name  # unnamed envs differ by placement
    with pytest.raises(ValueError, match="positive number"):
        rh.env(name="x", compute={"GPU": 0})
    with pytest.raises(ValueError, match="index into the cluster's ips"):
        rh.env(name="x", node=-2)
