"""rh.package and cluster.install_packages against a real daemon: local folders (editable, in place here; synced
over SSH), git URLs (a local bare repository), pip requirements, envs whose reqs hold packages, bad input."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

import runhouse as rh
from runhouse.errors import BadRequestError, DataNotFoundError, EnvCreationError, ObjectNotFoundError, PackageError
from runhouse.protocol import Op
from tests.conftest import free_port
from tests.integration import package_funcs

# The packages' own venv (reqs of its own), so nothing is installed into the interpreter the tests run in.
ENV_REQS = ["six==1.15.0"]


def make_package(root: Path, name: str, value: str) -> Path:
    """A package folder ``root/name`` (pyproject + module ``name`` whose ``value()`` returns ``value``)."""
    folder = root / name
    (folder / name).mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{name}"\nversion = "0.1"\n'
    )
    set_value(folder, value)
    return folder


def set_value(folder: Path, value: str) -> None:
    (folder / folder.name / "__init__.py").write_text(f"def value():\n    return {value!r}\n")


@pytest.fixture(scope="module")
def pkg_env(cluster):
    env = rh.env(reqs=ENV_REQS, name="packages_env")
    env.to(cluster)
    return env


def value_in(cluster, env, module):
    return rh.function(package_funcs.value_of).to(cluster, env=env)(module)


# --- local folders --------------------------------------------------------------------------------------
def test_local_folder_is_installed_editable_in_place_and_edits_are_seen_after_installing_again(
    cluster, pkg_env, tmp_path
):
    folder = make_package(tmp_path, "rh_pkg_edit", "one")
    result = cluster.install_packages([rh.package(str(folder))], env=pkg_env)
    assert result == {"installed": [str(folder)], "skipped": []}
    value, file = value_in(cluster, pkg_env, "rh_pkg_edit")
    assert value == "one"
    assert Path(file).parent == folder / "rh_pkg_edit"  # the daemon here uses the folder itself

    set_value(folder, "two")
    assert cluster.install_packages(rh.package(folder), env="packages_env")["installed"] == [str(folder)]
    assert value_in(cluster, pkg_env, "rh_pkg_edit")[0] == "two"

    began = time.monotonic()
    assert cluster.install_packages([str(folder)], env=pkg_env) == {"installed": [], "skipped": [str(folder)]}
    assert time.monotonic() - began < 2


def test_package_to_installs_and_returns_the_package(cluster, pkg_env, tmp_path):
    package = rh.package(make_package(tmp_path, "rh_pkg_to", "via to"))
    assert package.to(cluster, env=pkg_env) is package
    assert value_in(cluster, pkg_env, "rh_pkg_to")[0] == "via to"


def test_env_whose_reqs_hold_a_package_folder_gets_it_installed(cluster, tmp_path):
    folder = make_package(tmp_path, "rh_pkg_in_reqs", "from reqs")
    env = rh.env(reqs=[*ENV_REQS, str(folder)], name="env_with_package")
    assert env.reqs == ENV_REQS and [p.install_target for p in env.packages] == [str(folder)]
    assert value_in(cluster, env, "rh_pkg_in_reqs")[0] == "from reqs"


# --- git and pip --------------------------------------------------------------------------------------
def test_git_url_of_a_bare_repository_is_cloned_and_installed(cluster, pkg_env, tmp_path):
    source = make_package(tmp_path, "rh_pkg_git", "from git")
    bare = tmp_path / "rh_pkg_git.git"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(source)], check=True)
    subprocess.run([*git, "-C", str(source), "add", "."], check=True)
    subprocess.run([*git, "-C", str(source), "commit", "-qm", "package"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True)

    package = rh.package(f"file://{bare}@main")
    assert (package.kind, package.install_target) == ("git", f"git+file://{bare}@main")
    cluster.install_packages([package], env=pkg_env)
    value, file = value_in(cluster, pkg_env, "rh_pkg_git")
    assert value == "from git" and not file.startswith(str(source))  # a copy, not the working tree


def test_pip_requirement_given_as_one_string_is_installed(cluster, pkg_env):
    assert rh.package("idna==3.4").kind == "pip"
    result = cluster.install_packages("idna==3.4", env=pkg_env)  # one string: one package, never its letters
    assert result["installed"] + result["skipped"] == ["idna==3.4"]
    version = rh.function(package_funcs.installed_version).to(cluster, env=pkg_env)
    assert version("idna") == "3.4"


def test_failed_install_installs_nothing_and_says_why(cluster, pkg_env, tmp_path):
    folder = make_package(tmp_path, "rh_pkg_half", "never")
    with pytest.raises(EnvCreationError, match="runhouse-no-such-package-xyz"):
        cluster.install_packages([folder, "runhouse-no-such-package-xyz"], env=pkg_env)
    version = rh.function(package_funcs.installed_version).to(cluster, env=pkg_env)
    assert version("rh_pkg_half") is None
    # Not recorded as installed: the next attempt runs the installer again (and now succeeds).
    assert cluster.install_packages([folder], env=pkg_env)["installed"] == [str(folder)]


# --- bad input ----------------------------------------------------------------------------------------
def test_shell_metacharacters_reach_the_installer_as_one_argument(cluster, pkg_env, tmp_path):
    marker = tmp_path / "pwned"
    for spec in (f"six; touch {marker}", f"six && touch {marker}", f"$(touch {marker})"):
        with pytest.raises(EnvCreationError):
            cluster.install_packages([spec], env=pkg_env)
    assert not marker.exists()


def test_options_are_refused_by_the_client_and_by_the_daemon(cluster, pkg_env, tmp_path):
    for spec in ("--index-url evil", "-e .", " --extra-index-url=http://evil"):
        with pytest.raises(PackageError, match="command-line option"):
            rh.package(spec)
        with pytest.raises(PackageError, match="command-line option"):
            rh.env(reqs=[spec])
    not_a_package = tmp_path / "plain"
    not_a_package.mkdir()
    sent = [
        {"kind": "pip", "target": "--index-url=http://evil"},
        {"kind": "git", "target": "https://host/repo.git"},
        {"kind": "local", "target": "relative/path"},
        {"kind": "local", "target": str(not_a_package)},
        {"kind": "wheel", "target": "x"},
    ]
    for package in sent:
        with pytest.raises(BadRequestError):
            cluster._control(Op.INSTALL, {"env": "packages_env", "packages": [package]})
    with pytest.raises(BadRequestError, match="env spec|not allowed"):
        cluster._control(Op.ENV, {"env": {"name": "evil_env", "reqs": ["--index-url=http://evil"]}})


def test_paths_that_are_not_packages_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError, match="no folder"):
        rh.package("./missing")
    with pytest.raises(DataNotFoundError):
        rh.package("~/runhouse-no-such-folder")
    (tmp_path / "plain").mkdir()
    with pytest.raises(PackageError, match="pyproject.toml"):
        rh.package("plain")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(PackageError, match="is a file"):
        rh.package("./file.txt")


def test_installing_into_an_env_that_does_not_exist_is_not_found(cluster):
    with pytest.raises(ObjectNotFoundError, match="no_such_env"):
        cluster.install_packages(["six"], env="no_such_env")


# --- names ------------------------------------------------------------------------------------------
def test_package_saves_and_loads_by_name_with_its_kind(in_a_project):
    folder = make_package(in_a_project, "rh_pkg_named", "x")
    saved = rh.package(path=str(folder), name="my_pkg").save()
    loaded = rh.package(name="my_pkg")
    assert (loaded.kind, loaded.install_target) == ("local", str(folder)) and loaded == saved
    assert repr(loaded) == f"<Package {loaded.rns_address!r} local: {folder}>"
    assert rh.load("my_pkg").config() == saved.config()


# --- over SSH ----------------------------------------------------------------------------------------
from tests.integration.ssh.conftest import sshd  # noqa: E402,F401  (the loopback sshd fixture)


@pytest.fixture(scope="module")
def ssh_cluster(sshd, config_dir):  # noqa: F811
    creds = {
        "ssh_user": sshd.user,
        "ssh_private_key": str(sshd.private_key),
        "ssh_port": sshd.port,
        "known_hosts": str(sshd.known_hosts_with_key(sshd.root / "packages_known_hosts")),
    }
    box = rh.cluster(name="packages_ssh", ips=[sshd.host], ssh_creds=creds, server_port=free_port())
    box.up_if_not()
    try:
        yield box
    finally:
        box.teardown()


def test_local_folder_is_synced_over_ssh_installed_editable_and_resynced_when_changed(
    ssh_cluster, sshd, tmp_path  # noqa: F811
):
    folder = make_package(tmp_path, "rh_pkg_ssh", "one")
    [copy] = ssh_cluster.install_packages([rh.package(folder)])["installed"]
    assert copy.startswith(f"{sshd.home}/.rh/code/rh_pkg_ssh-")  # the synced copy in the host's runhouse folder
    value, file = value_in(ssh_cluster, None, "rh_pkg_ssh")
    assert value == "one" and file.startswith(copy)  # imported from the copy, editable

    set_value(folder, "two")
    assert ssh_cluster.install_packages([rh.package(folder)])["installed"]
    assert value_in(ssh_cluster, None, "rh_pkg_ssh")[0] == "two"
    assert ssh_cluster.install_packages([rh.package(folder)])["skipped"]
