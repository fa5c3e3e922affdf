"""rh.package decides once what a package is: a local folder, a git URL (as pip's git+ form) or a pip spec."""

from __future__ import annotations

import json

import pytest

import runhouse as rh
from runhouse.errors import DataNotFoundError, PackageError


@pytest.mark.parametrize(
    ("given", "target"),
    [
        ("git+https://github.com/org/repo.git@v1", "git+https://github.com/org/repo.git@v1"),
        ("https://github.com/org/repo.git", "git+https://github.com/org/repo.git"),
        ("https://github.com/org/repo.git@main", "git+https://github.com/org/repo.git@main"),
        ("git@github.com:org/repo.git", "git+ssh://git@github.com/org/repo.git"),
        ("git@github.com:org/repo.git@abc123", "git+ssh://git@github.com/org/repo.git@abc123"),
        ("file:///srv/repos/pkg.git", "git+file:///srv/repos/pkg.git"),
    ],
)
def test_git_urls_become_pip_git_requirements(given, target):
    package = rh.package(given)
    assert (package.kind, package.install_target) == ("git", target)
    assert repr(package) == f"<Package git: {target}>"


@pytest.mark.parametrize("spec", ["numpy", "numpy>=1.26", "requests[socks]", "six; python_version>'3'",
                                  "https://example.com/pkg-1.0-py3-none-any.whl"])
def test_anything_else_that_is_no_path_is_a_pip_requirement(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (rh.package(spec).kind, rh.package(spec).install_target) == ("pip", spec)


def test_a_package_folder_is_local_with_its_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "setup.cfg").write_text("[metadata]\nname = pkg\n")
    monkeypatch.chdir(tmp_path)
    for given in ("src/pkg", "./src/pkg", str(tmp_path / "src" / "pkg")):
        assert (rh.package(given).kind, rh.package(given).install_target) == ("local", str(tmp_path / "src" / "pkg"))
    with pytest.raises(DataNotFoundError):
        rh.package("src/other")  # looks like a path: never silently a pip requirement


def test_bad_input_is_refused_with_a_typed_error():
    for bad in ("", "  ", "-r requirements.txt", "numpy\nother"):
        with pytest.raises(PackageError):
            rh.package(bad)
    with pytest.raises(PackageError, match="kind"):
        rh.Package("numpy", kind="conda")
    with pytest.raises(TypeError, match="rh.package needs"):
        rh.package()


def test_config_round_trips_without_looking_at_the_disk_again(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    package = rh.package(tmp_path, name="p")
    config = package.config()
    assert config["kind"] == "local" and config["install_target"] == str(tmp_path)
    (tmp_path / "pyproject.toml").unlink()
    assert rh.Package.from_config(config) == package


def test_env_reqs_split_into_requirements_and_local_packages(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    env = rh.env(reqs=["numpy", rh.package("git@host:o/r.git"), rh.package(tmp_path), "pandas"])
    assert env.reqs == ["numpy", "git+ssh://git@host/o/r.git", "pandas"]
    assert [p.install_target for p in env.packages] == [str(tmp_path)]
    assert rh.Env.from_config(env.config()) == env
    assert rh.env(reqs=["numpy"]).name != env.name


def test_a_local_package_in_a_git_repo_is_saved_relative_to_the_repo(tmp_path, monkeypatch):
    import subprocess

    for checkout in ("alice", "bob"):  # the author's checkout and a reader's clone of the same repo
        (tmp_path / checkout / "libs" / "pkg").mkdir(parents=True)
        (tmp_path / checkout / "libs" / "pkg" / "pyproject.toml").write_text("[project]\nname = 'pkg'\n")
        subprocess.run(["git", "init", "-q", str(tmp_path / checkout)], check=True)
    config = rh.package(tmp_path / "alice" / "libs" / "pkg").config()
    assert (config["install_target"], config["in_repo"]) == ("libs/pkg", True)
    assert str(tmp_path) not in json.dumps(config)
    monkeypatch.chdir(tmp_path / "bob")
    assert rh.Package.from_config(config).install_target == str((tmp_path / "bob" / "libs" / "pkg").resolve())
