"""Saving, loading, listing and versioning every resource type by name, against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import runhouse as rh
from runhouse.errors import ConfigError, InvalidNameError, ObjectNotFoundError, RunhouseError
from tests.integration import funcs


@pytest.fixture(autouse=True)
def project(tmp_path, monkeypatch):
    """Each test works in a git repo of its own: the local store is its rh/ folder."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    rh.set_folder("~")
    return tmp_path


def fresh_process(code: str, project) -> str:
    """Run ``code`` in a new Python process in the project folder; returns its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=project, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_every_type_round_trips_through_its_config(cluster):
    env = rh.env(reqs=[], env_vars={"A": "1"}, name="cfg_env")
    fn = rh.function(funcs.add).to(cluster)
    cls = rh.module(funcs.Counter).to(cluster)
    for resource in (cluster, env, fn, cls):
        config = resource.config()
        assert json.loads(json.dumps(config)) == config
        assert {"name", "resource_type", "resource_subtype"} <= set(config)
        rebuilt = rh.Resource.from_config(config)
        assert type(rebuilt) is type(resource)
        assert rebuilt.config() == config
    assert rh.Function.from_config(fn.config()).remote_name == "add"
    with pytest.raises(ConfigError, match="not a Function"):
        rh.Function.from_config(env.config())


def _box(cluster):
    """A cluster object of the test's own for the shared daemon (saving it must not rename the fixture)."""
    return rh.cluster(name="box", host="localhost", server_port=cluster.server_port)


def test_saved_function_loads_in_a_fresh_process_and_calls_the_running_daemon(cluster, project):
    box = _box(cluster).save()
    rh.function(funcs.add).to(box).save("my_add")
    assert (project / "rh" / "my_add" / "config.json").exists()
    out = fresh_process("""
        import runhouse as rh
        fn = rh.function(name="my_add")
        print(fn(2, 3, stream_logs=False), rh.load("my_add")(1, 1, stream_logs=False))
    """, project)
    assert out == "5 2"


def test_saved_module_cluster_and_env_load_in_a_fresh_process(cluster, project):
    box = _box(cluster).save()
    rh.env(env_vars={"SAVED": "yes"}, name="saved_env").save()
    rh.module(funcs.Counter).to(box).save("~/counters/Counter")
    out = fresh_process("""
        import runhouse as rh
        Counter = rh.module(name="~/counters/Counter")
        c = Counter(start=41, name="from_fresh_process")
        box = rh.cluster(name="box")
        env = rh.env(name="saved_env")
        print(c.increment(), "from_fresh_process" in box.keys(), env.env_vars["SAVED"])
    """, project)
    assert out == "42 True yes"


def test_code_from_main_is_saved_by_value_and_reloads(cluster, project):
    fresh_process(f"""
        import runhouse as rh
        def triple(x):
            return 3 * x
        box = rh.cluster(name="box", host="localhost", server_port={cluster.server_port})
        rh.function(triple).to(box).save("triple")
    """, project)
    out = fresh_process("""
        import runhouse as rh
        fn = rh.function(name="triple")
        print(fn(3, stream_logs=False), fn._local_code()(4))
    """, project)
    assert out == "9 12"


def test_exists_load_and_typed_factories(cluster):
    assert not rh.exists("nothing_here")
    with pytest.raises(ObjectNotFoundError):
        rh.load("nothing_here")
    rh.env(env_vars={"X": "1"}, name="typed_env").save()
    assert rh.exists("typed_env") and rh.exists("~/typed_env")
    with pytest.raises(ConfigError, match="is a env, not a function"):
        rh.function(name="typed_env")
    with pytest.raises(ObjectNotFoundError):
        rh.env(name="never_saved_env")


def test_history_lists_versions_and_load_gets_an_older_one(cluster):
    fn = rh.function(funcs.add).to(cluster).save("versioned")
    fn.save()  # unchanged: no new version
    assert len(fn.history()) == 1
    fn.to(cluster, env=rh.env(env_vars={"V": "2"}, name="v2_env")).save("versioned")
    versions = rh.load("versioned").history()
    assert len(versions) == 2 and versions[-1]["current"]
    assert rh.load("versioned", version=versions[0]["version"]).env == "default"
    assert rh.load("versioned").env == "v2_env"
    rh.load("versioned", version=versions[0]["version"]).save()  # roll back: the old config is current again
    assert rh.load("versioned").env == "default"
    assert len(rh.load("versioned").history()) == 3


def test_delete_configs(cluster):
    fn = rh.function(funcs.add).to(cluster).save("to_delete")
    assert fn.delete_configs() is True
    assert not rh.exists("to_delete")
    assert fn.delete_configs() is False


def test_anonymous_resources_are_never_written(cluster, project):
    rh.function(funcs.add).to(cluster)
    rh.module(funcs.Counter).to(cluster)(name="anon_counter")
    rh.cluster(host="localhost", server_port=cluster.server_port).keys()
    assert not (project / "rh").exists()
    with pytest.raises(RunhouseError, match="no name"):
        rh.cluster(host="localhost", server_port=cluster.server_port).save()


def test_bare_names_resolve_in_the_current_folder(cluster, project):
    rh.set_folder("~/proj")
    assert rh.current_folder() == "~/proj"
    rh.env(env_vars={"F": "1"}, name="folder_env").save()
    assert (project / "rh" / "proj" / "folder_env" / "config.json").exists()
    assert rh.load("folder_env").rns_address == "~/proj/folder_env"
    rh.set_folder("~")
    assert rh.load("~/proj/folder_env").env_vars == {"F": "1"}
    assert [e["name"] for e in rh.folder_contents("~/proj")] == ["folder_env"]


def test_dryrun_builds_without_touching_the_cluster():
    nowhere = rh.cluster(name="nowhere", host="localhost", server_port=1)
    fn = rh.function(funcs.add).to(nowhere, env="some_env", dryrun=True)
    assert (fn.system is nowhere, fn.env, fn.remote_name) == (True, "some_env", "add")
    assert rh.Function.from_config(fn.config(), dryrun=True).env == "some_env"


def test_builtin_configs_load_and_are_read_only():
    local = rh.load("^rh-local")
    assert isinstance(local, rh.Cluster) and local.rns_address == "^rh-local"
    assert rh.env(name="^rh-numpy").reqs == ["numpy"]
    with pytest.raises(InvalidNameError, match="read-only|built-in"):
        local.save()
    with pytest.raises(ObjectNotFoundError):
        rh.load("^no-such-builtin")


@pytest.mark.parametrize("name", ["../escape", "~/a/../b", "~//a", "a\x00b", "x" * 300, "~/a/"])
def test_bad_names_are_rejected_and_nothing_is_written(cluster, project, name):
    with pytest.raises(InvalidNameError):
        rh.function(funcs.add).to(cluster).save(name)
    assert not (project / "rh").exists() or not any((project / "rh").rglob("config.json"))


def test_den_addresses_say_den_is_needed():
    with pytest.raises(RunhouseError, match="Den"):
        rh.env(env_vars={"D": "1"}, name="den_env").save("/someone/den_env")


def test_cli_ls_lists_resources_with_type_and_time(cluster, project):
    rh.env(env_vars={"L": "1"}, name="listed_env").save()
    rh.function(funcs.add).to(cluster).save("listed_fn")
    out = subprocess.run(
        [sys.executable, "-m", "runhouse.cli", "ls", "~"], cwd=project, capture_output=True, text=True, check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "listed_env" in out and "listed_fn" in out and "function" in out and "env" in out
