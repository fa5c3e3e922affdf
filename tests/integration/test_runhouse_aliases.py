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


def test_a_call_without_arguments_and_with_query_arguments_answers_a_get(cluster):
    import httpx

    rh.function(funcs.add).to(cluster)
    rh.function(funcs.pid).to(cluster)
    headers = {"Authorization": f"Bearer {cluster.client.token}"}
    base = f"http://127.0.0.1:{cluster.server_port}"
    answer = httpx.get(f"{base}/pid/call", headers=headers, timeout=30)
    assert answer.status_code == 200 and isinstance(answer.json()["result"], int)
    answer = httpx.get(f"{base}/add/call", params={"a": "2", "b": "[1]"}, headers=headers, timeout=30)
    assert answer.status_code == 422 and "TypeError" in answer.text  # 2 + [1] fails in the function
    answer = httpx.get(f"{base}/add/call?a=2&b=40", headers=headers, timeout=30)
    assert answer.json() == {"result": 42}
    answer = httpx.get(f"{base}/add/call?a=x&b=y", headers=headers, timeout=30)
    assert answer.json() == {"result": "xy"}  # values that are not JSON are text
    assert httpx.get(f"{base}/add/call?a=1&b=2", timeout=30).status_code == 401
    assert httpx.get(f"{base}/_/keys", headers=headers, timeout=30).status_code == 400  # control stays POST


def test_deleting_an_env_stops_its_workers_and_forgets_it_with_its_objects(own_cluster):
    env = rh.env(name="doomed", env_vars={"MODE": "x"})
    fn = rh.function(funcs.pid).to(own_cluster, env=env)
    worker = fn()
    assert "doomed" in [e["name"] for e in own_cluster.status()["envs"]]
    assert own_cluster.delete("doomed") == ["doomed"]
    status = own_cluster.status()
    assert "doomed" not in [e["name"] for e in status["envs"]]
    assert "pid" not in own_cluster.keys()
    assert worker not in [w["pid"] for w in status["workers"]]
    import psutil

    deadline = __import__("time").monotonic() + 10
    while psutil.pid_exists(worker) and psutil.Process(worker).status() != psutil.STATUS_ZOMBIE:
        assert __import__("time").monotonic() < deadline
    with pytest.raises(rh.RunhouseError, match="default env cannot be deleted"):
        own_cluster.delete("default")
    assert rh.function(funcs.pid).to(own_cluster, env=env)() != worker  # made again on demand


def test_a_local_daemon_has_the_whole_cluster_api(own_cluster, tmp_path):
    marker = tmp_path / "ran"
    first = own_cluster.run_setup([f"echo once >> {marker}"])
    assert first and first[0][0] == 0
    assert own_cluster.run_setup([f"echo once >> {marker}"]) == []
    assert marker.read_text() == "once\n"
    with pytest.raises(rh.RunhouseError, match="no tunnel to open"):
        own_cluster.ssh_tunnel(local_port=8888, remote_port=8888)
    pid = own_cluster.status()["pid"]
    own_cluster.restart_grpc_server()
    assert own_cluster.status()["pid"] != pid
    assert own_cluster.keep_warm() is own_cluster


def test_default_env_is_used_by_every_call_put_and_command_unless_told_otherwise(own_cluster):
    dflt = rh.env(name="dflt", env_vars={"MODE": "from-default-env"})
    box = rh.cluster(name="with_default", host="localhost", server_port=own_cluster.server_port, default_env=dflt)
    assert rh.function(funcs.env_var).to(box)("MODE") == "from-default-env"
    assert box.run(["echo $MODE"], stream_logs=False)[0][1] == "from-default-env\n"
    box.put("in_default", 1)
    assert "in_default" in box.keys(env="dflt")
    assert rh.function(funcs.env_var).to(box, env="default")("MODE") != "from-default-env"
    again = rh.Cluster.from_config(box.config())
    assert again.config()["default_env"]["name"] == "dflt"
    assert rh.function(funcs.env_var, name="env_var_again").to(again)("MODE") == "from-default-env"
    with pytest.raises(TypeError, match="default_env"):
        rh.cluster(name="bad", host="localhost", server_port=own_cluster.server_port, default_env=3)


def test_folders_and_blobs_take_url_and_fs(tmp_path):
    folder = rh.folder(url=str(tmp_path / "data"), fs="file")
    folder.put({"a.txt": "hello"})
    assert rh.folder(path=str(tmp_path / "data"), system="file").ls(full_paths=False) == ["a.txt"]
    rh.blob(data=b"bytes", url=str(tmp_path / "b.bin"), fs="file").write()
    assert rh.blob(path=str(tmp_path / "b.bin"), system="file").data == b"bytes"
    with pytest.raises(ValueError, match="disagree"):
        rh.folder(path="a", url="b")


def test_a_saved_function_names_its_code_relative_to_its_repo(cluster, tmp_path, monkeypatch):
    import json
    import subprocess
    from pathlib import Path

    import tests

    repo = Path(tests.__file__).resolve().parents[1]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    saved = rh.function(funcs.add, name="~/portable_add").to(cluster).save()
    config = json.loads((tmp_path / "rh" / "portable_add" / "config.json").read_text())
    assert config["code"]["root"] == "." and config["code"]["root_in_repo"] is True
    assert str(repo) not in json.dumps(config["code"])  # no folder of the author's machine
    assert rh.function(name="~/portable_add")(20, 22) == 42
    assert saved(1, 2) == 3


def test_a_named_blob_or_table_written_loads_by_name_as_the_readme_says(in_a_project):
    import pandas

    rh.blob(data=b"weights-bytes", name="weights").write()
    assert rh.blob(name="weights").data == b"weights-bytes"
    frame = pandas.DataFrame({"x": [1, 2, 3]})
    rh.table(data=frame, name="events").write()
    assert rh.table(name="events").to_pandas()["x"].tolist() == [1, 2, 3]
    assert (in_a_project / "rh" / "weights" / "config.json").exists()
