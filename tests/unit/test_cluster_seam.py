"""The cluster seam: an abstract base whose hooks a kind of cluster fills in; configs of every kind load back."""

from __future__ import annotations

import inspect

import pytest

import runhouse as rh
from runhouse.resources.clusters.base import Cluster
from runhouse.resources.clusters.direct import DirectCluster
from runhouse.resources.clusters.ray import RayCluster
from runhouse.resources.clusters.ssh import SSHCluster


def test_the_base_cannot_be_made_and_says_how_to_make_a_cluster():
    assert inspect.isabstract(Cluster)
    with pytest.raises(TypeError, match=r"rh\.cluster\(") as error:
        rh.Cluster(name="box")
    assert "ips=" in str(error.value) and "host=" in str(error.value)


def test_a_kind_of_cluster_must_fill_in_every_hook():
    class Partial(Cluster):
        host = "nowhere"

        def _endpoint(self) -> tuple[str, int]:
            return "127.0.0.1", 1

    with pytest.raises(TypeError, match="abstract"):
        Partial()
    assert {"_read_token", "_start_daemon", "_stop_daemon", "data_system"} <= Partial.__abstractmethods__


def test_the_factory_picks_the_kind_from_its_arguments():
    assert type(rh.cluster(name="box", host="localhost", server_port=32301)) is DirectCluster
    ssh = rh.cluster(name="gpu", ips=["10.0.0.5"], ssh_creds={"ssh_user": "ubuntu"})
    assert type(ssh) is SSHCluster and ssh.host == "10.0.0.5"
    several = rh.cluster(name="pair", ips=["10.0.0.5", "10.0.0.6"], ssh_creds={"ssh_user": "ubuntu"})
    assert type(several) is RayCluster and several.host == "10.0.0.5"
    assert list(several.hosts.connections) == ["10.0.0.5:22", "10.0.0.6:22"]
    several.close()


def test_configs_load_back_as_their_kind_including_those_saved_before_the_split():
    box = rh.cluster(name="box", host="localhost", server_port=32301)
    assert Cluster.from_config(box.config()) == box
    legacy = {"name": "box", "resource_type": "cluster", "resource_subtype": "Cluster", "host": "localhost",
              "server_port": 32301}
    loaded = Cluster.from_config(legacy)
    assert type(loaded) is DirectCluster and loaded.server_port == 32301 and loaded.host == "localhost"
    ssh = rh.cluster(name="gpu", ips=["10.0.0.5"], ssh_creds={"ssh_user": "ubuntu"})
    assert type(Cluster.from_config(ssh.config())) is SSHCluster


def test_leaving_a_with_block_closes_the_cluster():
    with rh.cluster(name="box", host="localhost", server_port=32301) as box:
        box._checked_up = True
    assert box._checked_up is False
