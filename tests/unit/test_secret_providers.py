"""Providers read credentials from where each tool keeps them and write them back the same way, 0600."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

import runhouse as rh
from runhouse.errors import ConfigError, MissingCredentialsError
from runhouse.resources._secret_providers import BUILTIN, find_provider, home_path, write_files

SAMPLES = {
    "aws": {"access_key": "AKIAEXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG"},
    "gcp": {"credentials": {"type": "authorized_user", "client_id": "id", "refresh_token": "tok"}},
    "azure": {"subscription_id": "1234-5678"},
    "lambda": {"api_key": "secret_lambda_key"},
    "huggingface": {"token": "hf_exampletoken"},
    "github": {"oauth_token": "gho_exampletoken"},
    "ssh": {"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "public_key": "ssh-ed25519 AAAA x\n",
            "key_name": "id_ed25519"},
    "sky": {"private_key": "-----BEGIN RSA PRIVATE KEY-----\nabc\n", "public_key": "ssh-rsa AAAA sky\n"},
}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home folder and no credentials in the environment."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for names in (p.env.values() for p in BUILTIN.values()):
        for name in (n for group in names for n in group):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return tmp_path


def test_every_builtin_provider_has_a_sample() -> None:
    assert sorted(SAMPLES) == rh.Secrets.builtin_providers()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_values_written_as_files_read_back_the_same(name: str) -> None:
    provider = find_provider(name)
    files = provider.render(SAMPLES[name])
    assert write_files(files) == {"written": list(files), "skipped": []}
    assert provider.read_local() == SAMPLES[name]
    for path in files:
        assert stat.S_IMODE(home_path(path).stat().st_mode) == 0o600
        assert stat.S_IMODE(home_path(path).parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_provider_is_configured_once_its_files_are_there(name: str) -> None:
    assert name not in rh.Secrets.configured_providers()
    write_files(find_provider(name).render(SAMPLES[name]))
    assert name in rh.Secrets.configured_providers()


def test_the_tools_own_file_formats_are_written() -> None:
    write_files(find_provider("aws").render(SAMPLES["aws"]))
    assert "aws_access_key_id = AKIAEXAMPLE" in home_path("~/.aws/credentials").read_text()
    write_files(find_provider("gcp").render(SAMPLES["gcp"]))
    adc = json.loads(home_path("~/.config/gcloud/application_default_credentials.json").read_text())
    assert adc["refresh_token"] == "tok"
    write_files(find_provider("huggingface").render(SAMPLES["huggingface"]))
    assert home_path("~/.cache/huggingface/token").read_text() == "hf_exampletoken"


def test_environment_variables_come_first(monkeypatch: pytest.MonkeyPatch) -> None:
    write_files(find_provider("aws").render(SAMPLES["aws"]))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from_env_id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from_env_secret")
    assert find_provider("aws").read_local() == {"access_key": "from_env_id", "secret_key": "from_env_secret"}
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert find_provider("huggingface").from_env() == {"token": "hf_env"}


def test_an_existing_file_is_kept_unless_overwrite() -> None:
    aws = find_provider("aws")
    write_files(aws.render(SAMPLES["aws"]))
    newer = aws.render({"access_key": "NEW", "secret_key": "NEW"})
    assert write_files(newer) == {"written": [], "skipped": ["~/.aws/credentials"]}
    assert aws.read_local() == SAMPLES["aws"]
    assert write_files(newer, overwrite=True)["written"] == ["~/.aws/credentials"]
    assert aws.read_local()["access_key"] == "NEW"


def test_a_file_at_another_path_can_be_read() -> None:
    other = home_path("~/keys/aws.ini")
    other.parent.mkdir()
    other.write_text("[default]\naws_access_key_id = A\naws_secret_access_key = B\n")
    assert find_provider("aws").from_files(str(other)) == {"access_key": "A", "secret_key": "B"}


def test_missing_credentials_and_missing_fields_are_clear_errors() -> None:
    with pytest.raises(MissingCredentialsError, match="no aws credentials in ~/.aws/credentials"):
        find_provider("aws").read_local()
    with pytest.raises(ConfigError, match="missing secret_key"):
        find_provider("aws").render({"access_key": "A"})


def test_files_outside_the_home_folder_are_refused() -> None:
    for path in ("/etc/passwd", "~/../escape", "relative"):
        with pytest.raises(ConfigError, match="home folder"):
            write_files({path: "x"})
    with pytest.raises(ConfigError, match="plain file name"):
        find_provider("ssh").render({**SAMPLES["ssh"], "key_name": "../authorized_keys"})


def test_custom_providers_have_values_and_no_files() -> None:
    custom = find_provider("my-api")
    assert custom.render({"key": "v"}) == {}
    assert not custom.is_configured()
    with pytest.raises(MissingCredentialsError, match="custom provider"):
        custom.read_local()


def test_save_provider_secrets_needs_no_account() -> None:
    report = rh.Secrets.save_provider_secrets({"huggingface": SAMPLES["huggingface"], "azure": SAMPLES["azure"]})
    assert sorted(report["written"]) == ["~/.azure/clouds.config", "~/.cache/huggingface/token"]
    assert rh.Secrets.get("azure") == SAMPLES["azure"]  # no store: read from this machine
    assert rh.Secrets.remove_local(["azure"]) == ["~/.azure/clouds.config"]
    assert "azure" not in rh.Secrets.configured_providers()


def test_storing_without_an_account_says_how(config_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"rh\.login"):
        rh.Secrets.put("aws", secret=SAMPLES["aws"])


def test_a_secret_shows_no_values_in_repr_or_config() -> None:
    secret = rh.secret(name="work-aws", provider="aws", values=SAMPLES["aws"])
    text = repr(secret) + json.dumps(secret.config()) + str(secret)
    assert "work-aws" in text and "AKIAEXAMPLE" not in text and "wJalr" not in text
    assert secret.config() == {"name": "work-aws", "resource_type": "secret", "resource_subtype": "Secret",
                               "provider": "aws"}
    assert secret.write()["written"] == ["~/.aws/credentials"]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_check_accepts_exactly_what_render_can_write(name: str) -> None:
    provider = find_provider(name)
    assert provider.check(SAMPLES[name]) == SAMPLES[name]
    assert write_files(provider.render(SAMPLES[name]))["written"]
    for key in provider.required:
        for broken in ({**SAMPLES[name], key: ""}, {**SAMPLES[name], key: 7}, {k: v for k, v in SAMPLES[name].items()
                                                                              if k != key}):
            for step in (provider.check, provider.render):
                with pytest.raises(ConfigError, match=f"^{name} secrets need {' and '.join(provider.required)}"):
                    step(broken)


@pytest.mark.parametrize("values", [{}, {"k": b"bytes"}, {"k": float("nan")}, {"k": "\ud800"}, ["k"]])
def test_values_must_be_a_non_empty_dict_of_plain_json(values: object) -> None:
    for name in ("my-api", "huggingface"):
        with pytest.raises(ConfigError, match=f"^{name} secrets need"):
            find_provider(name).check(values)


def test_gcp_credentials_are_a_dict_or_json_object_text() -> None:
    gcp = find_provider("gcp")
    assert gcp.check({"credentials": '{"type": "authorized_user"}'})
    for credentials in ("[1, 2]", "not json", 5):
        with pytest.raises(ConfigError, match="gcp secrets need credentials; credentials must be a dict or the text"):
            gcp.check({"credentials": credentials})
