"""One suite of the data contract (folders, blobs, tables), run once per system: this machine, a daemon
sharing this disk, a daemon reached only through calls, a cluster over SSH, and S3 (moto)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import runhouse as rh
from runhouse.errors import DataNotFoundError, InvalidNameError
from tests.integration.data.conftest import Target, digest, local_tree, tree_digest


class SystemContract:
    """What every data system promises. Subclasses provide the ``target`` fixture."""

    @pytest.fixture
    def target(self) -> Target:
        raise NotImplementedError

    def folder(self, target: Target, name: str) -> rh.Folder:
        return rh.folder(path=target.path(name), system=target.system, storage_options=target.storage_options)

    # --- folders ---------------------------------------------------------------------------------------
    def test_folder_put_get_ls_round_trip_bytes_exactly(self, target: Target) -> None:
        data = os.urandom(100_000)
        folder = self.folder(target, "basic").put({"a.bin": data, "notes.txt": "héllo", "sub/b.bin": b"\x00"})
        assert folder.exists_in_system()
        assert folder.ls() == ["a.bin", "notes.txt", "sub"]
        assert folder.ls(full_paths=True)[0] == f"{folder.path}/a.bin"
        assert digest(folder.get("a.bin")) == digest(data)
        assert folder.get("notes.txt").decode() == "héllo"
        assert folder.files() == {"a.bin": 100_000, "notes.txt": 6, "sub/b.bin": 1}

    def test_folder_open_streams_text_and_bytes(self, target: Target) -> None:
        folder = self.folder(target, "streamed")
        with folder.open("log.txt", "w") as f:
            f.write("line 1\n")
        with folder.open("log.txt", "a") as f:
            f.write("line 2\n")
        with folder.open("log.txt", "r") as f:
            assert f.read().splitlines() == ["line 1", "line 2"]
        with folder.open("log.txt", "rb") as f:
            f.seek(5)
            assert f.read(1) == b"1"

    def test_folder_rm_removes_named_contents_then_everything(self, target: Target) -> None:
        folder = self.folder(target, "removed").put({"keep": b"1", "drop": b"2", "sub/x": b"3"})
        folder.rm(["drop", "sub"])
        assert folder.ls() == ["keep"]
        folder.rm()
        assert not folder.exists_in_system()

    def test_missing_files_raise_a_file_not_found_error(self, target: Target) -> None:
        folder = self.folder(target, "empty").put({"here": b"x"})
        with pytest.raises(DataNotFoundError) as raised:
            folder.get("not_here")
        assert isinstance(raised.value, FileNotFoundError)
        with pytest.raises(FileNotFoundError):
            folder.open("not_here", "rb")
        with pytest.raises(FileNotFoundError):
            self.folder(target, "never_made").ls()

    @pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../b", "", "~/x"])
    def test_names_that_leave_the_folder_are_refused(self, target: Target, name: str) -> None:
        folder = self.folder(target, "guarded")
        with pytest.raises(InvalidNameError):
            folder.put({name: b"x"})
        with pytest.raises(InvalidNameError):
            folder.get(name)

    def test_folder_goes_to_the_laptop_and_back_unchanged(self, target: Target, tmp_path: Path) -> None:
        source = rh.folder(path=str(local_tree(tmp_path / "src")))
        there = source.to(target.system, path=target.path("moved"), storage_options=target.storage_options)
        assert there.system.describe() == rh.folder(
            path="x", system=target.system, storage_options=target.storage_options
        ).system.describe()
        assert tree_digest(there) == tree_digest(source)
        back = there.to("here", path=str(tmp_path / "back"))
        assert back.is_local() and tree_digest(back) == tree_digest(source)

    def test_a_second_transfer_replaces_the_destination_whole(self, target: Target, tmp_path: Path) -> None:
        first = rh.folder(path=str(tmp_path / "one")).put({"old.txt": b"old", "same.txt": b"1"})
        second = rh.folder(path=str(tmp_path / "two")).put({"new.txt": b"new", "same.txt": b"2"})
        first.to(target.system, path=target.path("replaced"), storage_options=target.storage_options)
        there = second.to(target.system, path=target.path("replaced"), storage_options=target.storage_options)
        assert there.files() == {"new.txt": 3, "same.txt": 1} and there.get("same.txt") == b"2"
        assert not any(".rh-partial" in name or ".rh-old" in name for name in there.ls())

    def test_folder_mv_moves_within_the_system(self, target: Target) -> None:
        folder = self.folder(target, "before").put({"f": b"data"})
        folder.mv(target.path("after"))
        assert folder.path.endswith("after") and folder.get("f") == b"data"
        assert not self.folder(target, "before").exists_in_system()

    # --- blobs -----------------------------------------------------------------------------------------
    def test_blob_writes_fetches_and_removes(self, target: Target) -> None:
        data = os.urandom(300_000)
        blob = rh.blob(data=data, name="b", path=target.path("b.bin"), system=target.system,
                       storage_options=target.storage_options).write()
        fresh = rh.Blob.from_config(blob.config())
        assert digest(fresh.data) == digest(data)
        assert fresh.rm() and not fresh.exists_in_system()
        with pytest.raises(FileNotFoundError):
            fresh.fetch()

    def test_blob_streams_larger_than_one_buffer(self, target: Target) -> None:
        chunk = os.urandom(1 << 20)
        blob = rh.blob(path=target.path("big.bin"), system=target.system, storage_options=target.storage_options)
        with blob.open("wb") as f:
            for _ in range(12):  # 12 MiB: more than one streaming buffer
                f.write(chunk)
        assert blob.system.size(blob.path) == 12 << 20
        with blob.open("rb") as f:
            assert digest(f.read()) == digest(chunk * 12)

    def test_blob_to_another_system_keeps_its_bytes(self, target: Target, tmp_path: Path) -> None:
        data = os.urandom(50_000)
        local = rh.blob(data=data, name="traveller", path=str(tmp_path / "traveller.bin")).write()
        there = local.to(target.system, path=target.path("t.bin"), storage_options=target.storage_options)
        assert digest(there.fetch()) == digest(data)
        back = there.to("file", path=str(tmp_path / "back.bin"))
        assert Path(back.path).read_bytes() == data

    # --- tables ----------------------------------------------------------------------------------------
    def test_table_round_trips_through_parquet_parts(self, target: Target) -> None:
        n = 2500
        df = pd.DataFrame({"id": range(n), "word": [f"w{i}" for i in range(n)], "x": [i / 3 for i in range(n)]})
        table = rh.table(data=df, name="events", path=target.path("events"), system=target.system,
                         storage_options=target.storage_options, rows_per_part=1000).write()
        assert [p.rsplit("/", 1)[1] for p in table.parts()] == [f"part-0000{i}.parquet" for i in range(3)]
        loaded = rh.Table.from_config(json.loads(json.dumps(table.config())))
        assert loaded.num_rows == 2500
        assert [f["name"] for f in loaded.config()["schema"]] == ["id", "word", "x"]
        assert loaded.fetch().equals(pa.Table.from_pandas(df))
        pd.testing.assert_frame_equal(loaded.to_pandas(), df)
        sizes = [batch.num_rows for batch in loaded.stream(batch_size=600)]
        assert sizes == [600, 600, 600, 600, 100]

    def test_table_from_record_batches_moves_to_the_laptop(self, target: Target, tmp_path: Path) -> None:
        batches = (pa.record_batch({"n": pa.array(range(i * 100, (i + 1) * 100))}) for i in range(5))
        table = rh.table(data=batches, path=target.path("numbers"), system=target.system,
                         storage_options=target.storage_options).write()
        here = table.to("file", path=str(tmp_path / "numbers"))
        assert here.fetch().column("n").to_pylist() == list(range(500))


class TestFile(SystemContract):
    @pytest.fixture
    def target(self, file_target: Target) -> Target:
        return file_target


class TestSharedDiskDaemon(SystemContract):
    @pytest.fixture
    def target(self, shared_daemon_target: Target) -> Target:
        return shared_daemon_target


class TestDaemonCalls(SystemContract):
    @pytest.fixture
    def target(self, daemon_target: Target) -> Target:
        return daemon_target


class TestSSH(SystemContract):
    @pytest.fixture
    def target(self, ssh_target: Target) -> Target:
        return ssh_target


class TestS3(SystemContract):
    @pytest.fixture
    def target(self, s3_target: Target) -> Target:
        return s3_target
