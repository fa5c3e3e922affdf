"""The local store on its own: atomic, versioned, never outside rh/."""

from __future__ import annotations

import json
import multiprocessing
import subprocess

import pytest

from runhouse.errors import InvalidNameError, ObjectNotFoundError
from runhouse.rns import local_store


@pytest.fixture
def root(tmp_path):
    return tmp_path / "rh"


def test_save_and_load_round_trip(root):
    assert local_store.save(("a", "b"), {"x": 1}, root)
    assert local_store.load(("a", "b"), root=root) == {"x": 1}
    assert json.loads((root / "a" / "b" / "config.json").read_text()) == {"x": 1}


def test_saving_an_unchanged_config_writes_nothing(root):
    local_store.save(("a",), {"x": 1}, root)
    mtime = (root / "a" / "config.json").stat().st_mtime_ns
    assert local_store.save(("a",), {"x": 1}, root) is False
    assert (root / "a" / "config.json").stat().st_mtime_ns == mtime
    assert len(local_store.history(("a",), root)) == 1


def test_every_change_keeps_the_previous_version(root):
    for value in range(3):
        local_store.save(("a",), {"x": value}, root)
    versions = local_store.history(("a",), root)
    assert [v["current"] for v in versions] == [False, False, True]
    assert [local_store.load(("a",), v["version"], root)["x"] for v in versions] == [0, 1, 2]
    with pytest.raises(ObjectNotFoundError, match="version"):
        local_store.load(("a",), "19700101T000000.000000Z", root)


def test_delete_keeps_resources_saved_below(root):
    local_store.save(("a",), {"x": 1}, root)
    local_store.save(("a", "b"), {"x": 2}, root)
    assert local_store.delete(("a",), root)
    assert not local_store.exists(("a",), root)
    assert local_store.load(("a", "b"), root=root) == {"x": 2}
    assert local_store.delete(("a",), root) is False


def test_deleting_the_last_config_leaves_no_empty_folders_nor_rh_itself(root):
    local_store.save(("quickstart", "add"), {"x": 1}, root)
    local_store.save(("quickstart", "add"), {"x": 2}, root)  # a history too
    local_store.save(("kept",), {"x": 3}, root)
    assert local_store.delete(("quickstart", "add"), root)
    assert sorted(p.name for p in root.iterdir()) == [".gitignore", "kept"]
    assert local_store.delete(("kept",), root)
    assert not root.exists(), "rh/ held nothing but runhouse's own .gitignore"


def test_a_gitignore_with_the_users_own_lines_is_kept(root):
    local_store.save(("a",), {"x": 1}, root)
    with (root / ".gitignore").open("a") as out:
        out.write("scratch/\n")
    local_store.delete(("a",), root)
    assert "scratch/" in (root / ".gitignore").read_text()


def test_list_folder_shows_resources_and_subfolders(root):
    local_store.save(("proj", "fn"), {"resource_type": "function"}, root)
    local_store.save(("proj", "sub", "env"), {"resource_type": "env"}, root)
    entries = {e["name"]: e for e in local_store.list_folder(("proj",), root)}
    assert entries["fn"]["resource_type"] == "function" and entries["fn"]["saved_at"]
    assert entries["sub"]["resource_type"] == "folder"


@pytest.mark.parametrize("parts", [("..",), ("a", "..", ".."), ("/etc",), ("a", "/abs")])
def test_paths_that_would_leave_rh_are_refused(root, parts):
    with pytest.raises(InvalidNameError):
        local_store.save(parts, {"x": 1}, root)


def test_repo_root_is_the_git_root(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "deep" / "er").mkdir(parents=True)
    assert local_store.repo_root(tmp_path / "deep" / "er") == tmp_path.resolve()
    outside = tmp_path.parent / "not-a-repo-dir"
    outside.mkdir(exist_ok=True)
    assert local_store.repo_root(outside) in (outside.resolve(), *outside.resolve().parents)


def _hammer(root, worker):
    for i in range(40):
        local_store.save(("shared",), {"worker": worker, "i": i}, root)


def test_concurrent_saves_from_two_processes_never_corrupt(root):
    procs = [multiprocessing.Process(target=_hammer, args=(root, w)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    versions = local_store.history(("shared",), root)
    assert len(versions) == 80
    for v in versions:
        config = local_store.load(("shared",), v["version"], root)
        assert config["worker"] in (1, 2)
    assert not list(root.rglob("*.tmp-*"))


def test_git_sees_only_the_configs_not_locks_or_history(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "rh").mkdir()
    (tmp_path / "rh" / ".gitignore").write_text("my-own-entry")  # kept as the user wrote it, lines added
    root = tmp_path / "rh"
    local_store.save(("team", "fn"), {"v": 1}, root)
    local_store.save(("team", "fn"), {"v": 2}, root)  # the first goes to .history
    assert (root / "team" / "fn" / ".history").is_dir() and (root / "team" / "fn" / ".lock").exists()
    seen = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain", "--untracked-files=all"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert sorted(p for p in seen if p != "??") == ["rh/.gitignore", "rh/team/fn/config.json"]
    assert (root / ".gitignore").read_text().splitlines() == ["my-own-entry", ".lock", ".history/"]
    local_store.save(("team", "other"), {"v": 1}, root)
    assert (root / ".gitignore").read_text().splitlines() == ["my-own-entry", ".lock", ".history/"]
