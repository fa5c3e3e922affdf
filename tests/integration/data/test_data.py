"""Data resources beyond the per-system contract: configs and the RNS, moves between clusters and buckets,
interrupted transfers, credentials and extras, and bounded memory for large tables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pytest

import runhouse as rh
from runhouse.config import configs
from runhouse.errors import MissingCredentialsError
from runhouse.resources.clusters.ssh import SSHCluster
from tests.integration.data.conftest import BUCKET, Target, digest, local_tree, tree_digest
from tests.integration.den.conftest import DenServer
from tests.support.sshd import SSHServer

MIB = 1 << 20


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repo of the test's own: the local RNS store is its rh/ folder."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    rh.set_folder("~")
    return tmp_path


# --- configs and names ------------------------------------------------------------------------------------
def test_configs_name_their_type_system_and_table_shape(project: Path, s3_target: Target) -> None:
    folder = rh.folder(path="data", name="my_folder")
    blob = rh.blob(data=b"x", name="my_blob", path=s3_target.path("b"), system="s3",
                   storage_options={**s3_target.storage_options, "secret": "never-saved"})
    table = rh.table(data=pa.table({"a": [1, 2, 3]}), name="my_table").write()
    for resource, kind in ((folder, "folder"), (blob, "blob"), (table, "table")):
        config = resource.config()
        assert json.loads(json.dumps(config)) == config
        assert config["resource_type"] == kind and config["resource_subtype"] == kind.capitalize()
    assert folder.config()["system"] == "file" and folder.config()["path"] == str(project / "data")
    assert blob.config()["system"] == "s3" and blob.config()["storage_options"] == s3_target.storage_options
    assert table.config()["num_rows"] == 3
    assert table.config()["schema"] == [{"name": "a", "type": "int64", "nullable": True}]


def test_saved_resources_load_by_name(project: Path, cluster: rh.Cluster) -> None:
    box = rh.cluster(name="data_box", host="localhost", server_port=cluster.server_port).save()
    rh.folder(path="on_box", system=box, name="box_folder").put({"f": b"1"}).save()
    rh.blob(data=b"payload", name="saved_blob").write().save()
    rh.table(data=pa.table({"n": [1, 2]}), name="saved_table").write().save()

    loaded_folder = rh.folder(name="box_folder")
    assert loaded_folder.config()["system"] == box.rns_address and loaded_folder.get("f") == b"1"
    assert rh.load("saved_blob").data == b"payload"  # type: ignore[attr-defined]
    assert rh.table(name="saved_table").fetch().column("n").to_pylist() == [1, 2]
    assert isinstance(rh.blob(name="saved_blob"), rh.Blob)


def test_a_blob_without_a_path_lives_in_the_runhouse_data_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_target: Target
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    blob = rh.blob(data=b"abc", name="defaulted").write()
    assert Path(blob.path) == tmp_path / ".cache/runhouse/blobs/defaulted"
    in_bucket = rh.blob(data=b"abc", name="defaulted", system=f"s3://{BUCKET}",
                        storage_options=s3_target.storage_options).write()
    assert in_bucket.path == f"{BUCKET}/runhouse/blobs/defaulted" and in_bucket.fetch() == b"abc"


# --- moves between systems --------------------------------------------------------------------------------
def test_folder_moves_from_a_cluster_to_s3_and_back(
    tmp_path: Path, ssh_target: Target, s3_target: Target
) -> None:
    on_cluster = rh.folder(path=str(local_tree(tmp_path / "tree"))).to(ssh_target.system, path=ssh_target.path("t"))
    in_bucket = on_cluster.to("s3", path=s3_target.path("t"), storage_options=s3_target.storage_options)
    again = in_bucket.to(ssh_target.system, path=ssh_target.path("t2"))
    assert tree_digest(in_bucket) == tree_digest(on_cluster) == tree_digest(again)


def test_a_table_moves_between_a_daemon_and_s3(tmp_path: Path, daemon_target: Target, s3_target: Target) -> None:
    data = pa.table({"id": list(range(1000)), "v": [i * 0.5 for i in range(1000)]})
    table = rh.table(data=data, path=daemon_target.path("t"), system=daemon_target.system, rows_per_part=300).write()
    in_bucket = table.to("s3", path=s3_target.path("t"), storage_options=s3_target.storage_options)
    assert in_bucket.fetch().equals(data) and in_bucket.num_rows == 1000


def test_interrupted_upload_leaves_nothing_that_looks_complete_and_a_retry_resumes(
    tmp_path: Path, ssh_cluster: SSHCluster, sshd: SSHServer
) -> None:
    source = tmp_path / "big"
    source.mkdir()
    for i in range(100):
        (source / f"part{i:03d}.bin").write_bytes(os.urandom(2 * MIB))
    destination = f"data/interrupted-{os.getpid()}"
    code = f"""
        import json, runhouse as rh
        box = rh.Cluster.from_config(json.loads({json.dumps(ssh_cluster.config())!r}))
        rh.folder(path={str(source)!r}).to(box, path={destination!r}, progress=False)
    """
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], start_new_session=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    stage = sshd.home / "data" / f".interrupted-{os.getpid()}.rh-partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(stage.glob("part*.bin"))) < 10 and child.poll() is None:
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert not (sshd.home / destination).exists()
    assert 10 <= len(list(stage.glob("part*.bin"))) < 100

    rh.folder(path=str(source)).to(ssh_cluster, path=destination, progress=True)
    there = sshd.home / destination  # the "remote" home is on this machine's disk
    assert {p.name: digest(p.read_bytes()) for p in there.iterdir()} == {
        p.name: digest(p.read_bytes()) for p in source.iterdir()
    }
    assert not stage.exists()


# --- credentials, extras, bad input -----------------------------------------------------------------------
def test_s3_without_credentials_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_target: Target
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    blob = rh.blob(data=b"x", path=s3_target.path("nocreds"), system="s3", storage_options=s3_target.storage_options)
    with pytest.raises(MissingCredentialsError, match="AWS_ACCESS_KEY_ID"):
        blob.write()


def test_gs_without_gcsfs_says_what_to_install() -> None:
    pytest.importorskip("fsspec")
    if _installed("gcsfs"):
        pytest.skip("gcsfs is installed here")
    with pytest.raises(ImportError, match=r'pip install "runhouse\[gs\]"'):
        rh.folder(path="bucket/x", system="gs").exists_in_system()


def test_a_table_needs_table_data() -> None:
    with pytest.raises(TypeError, match="DataFrame"):
        rh.table(data=42, path="/tmp/never").write()


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --- bounded memory ---------------------------------------------------------------------------------------
@pytest.fixture
def peak_rss() -> Iterator[dict[str, int]]:
    """The peak resident memory of this process while the test runs, sampled every 5 ms."""
    process = psutil.Process()
    result = {"start": process.memory_info().rss, "peak": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            result["peak"] = max(result["peak"], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    yield result
    done.set()
    thread.join()


def _generated_batches(total_bytes: int, rows: int = 100_000) -> Iterator[pa.RecordBatch]:
    """Record batches of random data (~8 MB each) adding up to ``total_bytes``, made one at a time."""
    import numpy as np

    per_row = 8 * 10
    for start in range(0, total_bytes // per_row, rows):
        columns = {f"c{i}": np.random.default_rng(start + i).random(rows) for i in range(10)}
        yield pa.record_batch({"row": np.arange(start, start + rows), **columns})


def test_a_table_larger_than_its_batches_writes_and_streams_in_bounded_memory(
    tmp_path: Path, peak_rss: dict[str, Any]
) -> None:
    total = 400 * MIB
    table = rh.table(data=_generated_batches(total), path=str(tmp_path / "large"), rows_per_part=500_000).write()
    assert table.num_rows * 88 >= total
    rows = 0
    for batch in table.stream(batch_size=50_000):
        rows += batch.num_rows
    assert rows == table.num_rows
    growth = peak_rss["peak"] - peak_rss["start"]
    print(f"wrote and streamed {total / MIB:.0f} MiB; peak RSS growth {growth / MIB:.0f} MiB")
    assert growth < 150 * MIB


def test_s3_takes_its_credentials_from_rh_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_target: Target, config_dir: Path
) -> None:
    fake = {"access_key": os.environ["AWS_ACCESS_KEY_ID"], "secret_key": os.environ["AWS_SECRET_ACCESS_KEY"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    den = DenServer(f"sqlite:///{tmp_path / 'den.sqlite'}").start()
    try:
        rh.login(token=den.user("s3").token, den_url=den.url)
        rh.Secrets.put("aws", secret=fake)
        blob = rh.blob(data=b"from secrets", path=s3_target.path("via-secrets"), system="s3",
                       storage_options=s3_target.storage_options)
        blob.write()
        assert blob.fetch() == b"from secrets"
        assert fake["secret_key"] not in json.dumps(blob.config())
    finally:
        rh.logout()
        configs.set("den_url", None)
        den.stop()


def test_s3_without_a_configured_bucket_makes_one_per_user_on_first_write(
    project: Path, s3_server: dict[str, Any], config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server, skip_instance_cache=True)
    assert configs.get("default_bucket") is None
    configs.set("token", "not-checked-here")
    configs.set("username", "Ada_Lovelace")  # logged in (no Den is asked: the bucket is named from the login)
    try:
        reader = rh.blob(name="never-written", system="s3", storage_options=s3_server)
        assert not reader.system.exists(reader.path)
        assert not fs.exists("runhouse-ada-lovelace"), "a read must not make the bucket"
        with caplog.at_level("WARNING", logger="runhouse"):
            blob = rh.blob(data=b"payload", name="weights", system="s3", storage_options=s3_server).write()
        assert blob.path.startswith("runhouse-ada-lovelace/runhouse/")
        assert fs.exists("runhouse-ada-lovelace")
        assert "runhouse-ada-lovelace" in caplog.text and "default_bucket" in caplog.text
        assert rh.blob(name="weights").fetch() == b"payload"
        caplog.clear()
        with caplog.at_level("WARNING", logger="runhouse"):
            rh.blob(data=b"again", name="second", system="s3", storage_options=s3_server).write()
        assert "created" not in caplog.text, "an existing bucket is used quietly"
    finally:
        configs.set("username", None)
        configs.set("token", None)
