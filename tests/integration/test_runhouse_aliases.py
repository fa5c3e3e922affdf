"""Runhouse's documented calls that we keep as they are written (issue 16, first part): rh.send, function(...,
system=, reqs=), .to(..., name=), and rh.cluster's keyword check; each against a real daemon."""

from __future__ import annotations

import warnings

import pytest

import runhouse as rh
from tests.integration import funcs


def test_rh_send_is_rh_function_without_deprecation_noise(cluster):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remote_add = rh.send(funcs.add).to(cluster)
    assert remote_add(2, 3) == 5
    assert rh.send is rh.function


def test_function_with_system_deploys_at_once(cluster):
    remote_add = rh.function(funcs.add, name="add_at_once", system=cluster)
    assert remote_add.system is cluster and remote_add(1, 1) == 2
    assert "add_at_once" in cluster.keys()


def test_function_with_reqs_builds_its_env(cluster):
    version = rh.function(funcs.version_of, system=cluster, reqs=["six"])
    assert version("six")
    assert version.env != "default"
    with pytest.raises(ValueError, match="not both"):
        rh.function(funcs.add, system=cluster, env="default", reqs=["six"])


def test_to_with_a_name_names_the_deployed_copy(cluster):
    plain = rh.function(funcs.add)
    named = plain.to(cluster, name="added_under_a_name")
    assert named.name == "added_under_a_name" and named(4, 5) == 9
    assert "added_under_a_name" in cluster.keys()
    assert plain.name == "add"  # the local function keeps its own name
    assert cluster.get("added_under_a_name")(1, 2) == 3


def test_a_saved_function_loads_by_name_through_send_too(cluster, tmp_path, monkeypatch):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    rh.function(funcs.add, name="~/saved_add").to(cluster).save()
    assert rh.send(name="~/saved_add")(2, 2) == 4


@pytest.mark.parametrize("keyword", ["sshcreds", "instance", "colour"])
def test_an_unknown_keyword_to_rh_cluster_is_a_type_error_naming_it(keyword):
    with pytest.raises(TypeError, match=f"'{keyword}'.*ssh_creds"):
        rh.cluster(name="x", ips=["10.0.0.5"], **{keyword: 1})
    with pytest.raises(TypeError, match=f"'{keyword}'"):
        rh.cluster(name="x", host="localhost", **{keyword: 1})
