"""What ``system=`` means: the registry of named data systems, and clusters saying which data system they have."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import runhouse as rh
from runhouse.errors import ConfigError
from runhouse.resources.data import data_system, get_implementation, register_implementation, registry
from runhouse.resources.data.posix import FileSystem


class _Scratch(FileSystem):
    """A named system for these tests: this machine's disk under another name, remembering its location."""

    kind = "scratch"

    def __init__(self, location: str | None = None) -> None:
        self.location = location

    @classmethod
    def from_name(
        cls, name: str, location: str | None = None, storage_options: Mapping[str, Any] | None = None
    ) -> _Scratch:
        return cls(location)


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The registry's names, restored after the test."""
    monkeypatch.setattr(registry, "known_implementations", dict(registry.known_implementations))
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    return registry.known_implementations


def test_names_for_this_machine_give_its_disk() -> None:
    for system in (None, "file", "here", "local"):
        assert isinstance(data_system(system), FileSystem)


def test_a_data_system_is_its_own_system() -> None:
    system = FileSystem()
    assert data_system(system) is system


def test_a_registered_name_is_imported_on_first_use_with_its_location(names: dict[str, Any]) -> None:
    register_implementation("scratch", f"{__name__}._Scratch")
    assert "scratch" in registry.available_implementations()
    system = data_system("scratch://somewhere")
    assert isinstance(system, _Scratch) and system.location == "somewhere"
    assert get_implementation("scratch") is _Scratch


def test_registering_a_taken_name_needs_clobber(names: dict[str, Any]) -> None:
    register_implementation("scratch", _Scratch)
    register_implementation("scratch", _Scratch)  # the same again is fine
    with pytest.raises(ConfigError, match="clobber"):
        register_implementation("scratch", "somewhere.else.System")
    register_implementation("scratch", "somewhere.else.System", clobber=True)
    assert names["scratch"].target == "somewhere.else.System"


def test_a_missing_dependency_says_what_to_install(names: dict[str, Any]) -> None:
    register_implementation("broken", "scratchfs_not_installed.System", requires="scratchfs", install="pip install x")
    with pytest.raises(ImportError, match="'broken' data needs scratchfs: pip install x"):
        data_system("broken")


def test_a_bucket_url_names_the_store_and_its_default_bucket() -> None:
    system = data_system("s3://bucket")
    assert system.describe() == "s3" and system.data_root() == "bucket/runhouse"


def test_a_cluster_gives_the_data_system_it_says_it_has(cluster: rh.Cluster) -> None:
    assert type(data_system(cluster)) is type(cluster.data_system())
    assert type(data_system(cluster.config())) is type(cluster.data_system())


def test_a_saved_resource_that_is_not_a_cluster_is_refused(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    rh.folder(path=str(tmp_path / "f"), name="not_a_cluster").save()
    with pytest.raises(ConfigError, match="is a folder"):
        data_system("not_a_cluster")


def test_anything_else_is_refused() -> None:
    with pytest.raises(ConfigError, match="a cluster"):
        data_system(42)  # type: ignore[arg-type]
