"""rh.Secrets against a real Den and a real daemon: credentials go up from one machine's files and come back
down as the same files, 0600, here or on a cluster; login and logout offer to move them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runhouse as rh
from runhouse.config import configs
from runhouse.errors import ConfigError, InvalidNameError, ObjectNotFoundError
from runhouse.paths import daemon_dir
from runhouse.resources._secret_providers import BUILTIN, find_provider
from tests.conftest import running_daemon
from tests.integration.den.conftest import DenServer, DenUser

AWS = {"access_key": "AKIACLIENTTEST", "secret_key": "client-secret-value"}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This machine's home folder, empty, and no credentials in the environment."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    for names in (p.env.values() for p in BUILTIN.values()):
        for name in (n for group in names for n in group):
            monkeypatch.delenv(name, raising=False)
    return folder


def test_put_get_names_delete(alice: DenUser, home: Path) -> None:
    assert rh.Secrets.put("aws", secret=AWS) == "aws"
    assert rh.Secrets.get("aws") == AWS
    assert rh.Secrets.names() == {"aws": "aws"}
    rh.Secrets.delete("aws")
    with pytest.raises(ObjectNotFoundError):
        rh.Secrets.get("aws")


def test_credentials_travel_from_one_machines_files_to_anothers(alice: DenUser, home: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS["secret_key"])
    rh.Secrets.put("aws", from_env=True)
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text("hf_uploaded")
    assert sorted(rh.Secrets.extract_and_upload()) == ["aws", "huggingface"]

    other = home.parent / "other_machine"
    other.mkdir()
    monkeypatch.setenv("HOME", str(other))
    report = rh.Secrets.download_into_env()
    assert sorted(report["written"]) == ["~/.aws/credentials", "~/.cache/huggingface/token"]
    assert (other / ".cache" / "huggingface" / "token").read_text() == "hf_uploaded"
    credentials = other / ".aws" / "credentials"
    assert "aws_secret_access_key = client-secret-value" in credentials.read_text()
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600


def test_download_keeps_existing_files_and_says_so(alice: DenUser, home: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rh.Secrets.put("aws", secret=AWS)
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text("[default]\naws_access_key_id = MINE\naws_secret_access_key = X\n")
    assert rh.Secrets.download_into_env(["aws"]) == {"written": [], "skipped": ["~/.aws/credentials"]}
    assert "MINE" in (home / ".aws" / "credentials").read_text()
    assert "kept existing ~/.aws/credentials" in capsys.readouterr().err
    assert rh.Secrets.download_into_env(["aws"], overwrite=True)["written"] == ["~/.aws/credentials"]
    assert "AKIACLIENTTEST" in (home / ".aws" / "credentials").read_text()


def test_secret_resources_save_and_load_by_name(alice: DenUser, home: Path) -> None:
    rh.secret(name="work-aws", provider="aws", values=AWS).save()
    loaded = rh.secret(name="work-aws")
    assert loaded.provider == "aws" and loaded.values == AWS
    assert "client-secret-value" not in repr(loaded)
    assert loaded.write()["written"] == ["~/.aws/credentials"]
    assert loaded.delete_configs() and not loaded.delete_configs()


def test_secrets_are_installed_on_a_cluster_through_its_daemon(alice: DenUser, home: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cluster_home = tmp_path / "cluster_home"
    cluster_home.mkdir()
    monkeypatch.setenv("HOME", str(cluster_home))  # the daemon's workers inherit it: the cluster's home
    with running_daemon("secrets") as box:
        monkeypatch.setenv("HOME", str(home))
        rh.Secrets.put("aws", secret=AWS)
        rh.Secrets.put("huggingface", secret={"token": "hf_on_cluster"})
        report = rh.Secrets.to(box, providers=["aws", "huggingface"])
        assert sorted(report["written"]) == ["~/.aws/credentials", "~/.cache/huggingface/token"]
        assert rh.Secrets.to(box, providers=["aws"])["skipped"] == ["~/.aws/credentials"]
        rh.secret(name="huggingface").to(box, overwrite=True)
        log = (daemon_dir(box.server_port) / "daemon.log").read_text()
    assert "hf_on_cluster" not in log and "client-secret-value" not in log
    token = cluster_home / ".cache" / "huggingface" / "token"
    assert token.read_text() == "hf_on_cluster" and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert "AKIACLIENTTEST" in (cluster_home / ".aws" / "credentials").read_text()
    assert not (home / ".aws").exists()


@pytest.fixture
def logged_out(den: DenServer, config_dir: Path, project: Path) -> Iterator[None]:
    yield
    rh.logout()
    configs.set("den_url", None)


def test_login_offers_to_upload_and_download_secrets_and_logout_to_remove_them(
        den: DenServer, home: Path, logged_out: None) -> None:
    user = den.user("sam")
    (home / ".lambda_cloud").mkdir()
    (home / ".lambda_cloud" / "lambda_keys").write_text("api_key = lambda-from-login\n")
    env = {**os.environ, "HOME": str(home)}
    answers = f"{user.token}\nn\nn\ny\nn\n"  # token; defaults up, down: no; secrets up: yes; down: no
    out = subprocess.run([sys.executable, "-m", "runhouse.cli", "login", "--den-url", den.url], input=answers,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Upload the credentials found here (lambda)" in out.stdout
    assert rh.Secrets.get("lambda") == {"api_key": "lambda-from-login"}

    fresh = home.parent / "fresh"
    fresh.mkdir()
    out = subprocess.run([sys.executable, "-m", "runhouse.cli", "login", "--den-url", den.url],
                         input=f"{user.token}\nn\nn\ny\n", env={**env, "HOME": str(fresh)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (fresh / ".lambda_cloud" / "lambda_keys").read_text() == "api_key = lambda-from-login\n"

    out = subprocess.run([sys.executable, "-m", "runhouse.cli", "logout"], input="n\ny\n",  # Den's copies stay
                         env={**env, "HOME": str(fresh)}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "removed ~/.lambda_cloud/lambda_keys" in out.stdout
    assert not (fresh / ".lambda_cloud" / "lambda_keys").exists()
    assert (home / ".lambda_cloud" / "lambda_keys").exists()


# Shapes download_into_env could not write as the provider's files, refused when stored instead.
UNWRITABLE = {
    "aws without secret_key": ("aws", {"access_key": "AKIA"}, "missing secret_key"),
    "aws key not text": ("aws", {"access_key": "AKIA", "secret_key": {"nested": "x"}}, "secret_key is dict"),
    "huggingface wrong key": ("huggingface", {"hf_token": "hf_x"}, "missing token"),
    "gcp credentials not json": ("gcp", {"credentials": "not json"}, "JSON object"),
    "ssh key_name a path": ("ssh", {"private_key": "k", "key_name": "../authorized_keys"}, "plain file name"),
    "lambda key a number": ("lambda", {"api_key": 12345}, "api_key is int"),
}


@pytest.mark.parametrize(("provider", "values", "problem"), UNWRITABLE.values(), ids=UNWRITABLE.keys())
def test_put_refuses_values_the_provider_could_not_write(alice: DenUser, home: Path, provider: str,
                                                         values: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=f"^{provider} secrets need .*; .*{problem}") as refused:
        rh.Secrets.put(provider, secret=values)
    expected = " and ".join(find_provider(provider).required)
    assert expected in str(refused.value) and "12345" not in str(refused.value)
    assert rh.Secrets.names() == {}


def test_put_checks_what_it_reads_from_files_too(alice: DenUser, home: Path) -> None:
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text("[default]\naws_access_key_id = ONLY_THE_ID\n")
    with pytest.raises(ConfigError, match="aws secrets need access_key and secret_key; missing secret_key"):
        rh.Secrets.put("aws")
    assert rh.Secrets.names() == {}


@pytest.mark.parametrize("name", ["aws/x", "aws?x=1", "aws#x", "a%41", "aws%2F..%2Fx", "../aws"])
def test_secret_names_reach_den_whole_and_touch_no_other_secret(alice: DenUser, home: Path, name: str) -> None:
    rh.Secrets.put("aws", secret=AWS)
    rh.Secrets.put("custom", secret={"key": "value-of-aA"}, name="aA")
    for attempt in (lambda: rh.Secrets.get(name), lambda: rh.Secrets.delete(name),
                    lambda: rh.Secrets.put("custom", secret={"key": "v"}, name=name),
                    lambda: rh.Secrets.put(name, secret={"key": "v"})):
        with pytest.raises(InvalidNameError, match="Invalid"):
            attempt()
    assert rh.Secrets.names() == {"aws": "aws", "aA": "custom"}
    assert rh.Secrets.get("aws") == AWS and rh.Secrets.get("aA") == {"key": "value-of-aA"}
