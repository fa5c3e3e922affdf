"""The user's settings file, ``config.yaml`` in ``RH_CONFIG_DIR``: defaults, validation, secrecy, atomic writes."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from runhouse.config import Configs, Settings, configs
from runhouse.errors import ConfigError

SUBPROCESS_TIMEOUT = 60  # seconds for a child process doing 50 sets


@pytest.fixture(autouse=True)
def rh_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runhouse folder of the test's own (not yet created); the real home is never touched."""
    folder = tmp_path / "rh"
    monkeypatch.setenv("RH_CONFIG_DIR", str(folder))
    monkeypatch.delenv("RH_TOKEN", raising=False)
    return folder


def read_file(folder: Path) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text())


def test_rh_config_dir_locates_the_file(rh_dir: Path):
    assert configs.path == rh_dir / "config.yaml"
    assert Configs().path == rh_dir / "config.yaml"


def test_defaults_without_a_file(rh_dir: Path):
    assert configs.load() == Settings()
    assert configs.get("default_folder") == "~"
    assert configs.get("use_spot") is False
    assert configs.get("default_autostop") is None
    assert configs.get("den_url", "https://example.com") == "https://example.com"
    assert configs.get("not_a_setting", 7) == 7
    assert configs.to_dict() == {}
    assert not rh_dir.exists()  # reading leaves nothing behind


def test_set_is_seen_by_a_fresh_instance():
    configs.set("username", "ada")
    configs.set("default_autostop", 60)
    fresh = Configs()
    assert fresh.get("username") == "ada"
    assert fresh.get("default_autostop") == 60


def test_file_is_yaml_with_mode_0600_in_a_0700_folder(rh_dir: Path):
    configs.set("token", "secret-token")
    configs.set("use_spot", True)
    assert read_file(rh_dir) == {"token": "secret-token", "use_spot": True}
    assert stat.S_IMODE((rh_dir / "config.yaml").stat().st_mode) == 0o600
    assert stat.S_IMODE(rh_dir.stat().st_mode) == 0o700
    assert not list(rh_dir.glob("*.tmp"))  # no temporary file left behind


def test_unknown_keys_survive_setting_another_key(rh_dir: Path):
    rh_dir.mkdir()
    (rh_dir / "config.yaml").write_text("future_setting:\n  nested: [1, 2]\nusername: ada\n")
    configs.set("default_provider", "gcp")
    assert read_file(rh_dir) == {"username": "ada", "default_provider": "gcp", "future_setting": {"nested": [1, 2]}}
    assert configs.get("future_setting") == {"nested": [1, 2]}
    assert configs.load().model_extra == {"future_setting": {"nested": [1, 2]}}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("default_autostop", "abc"),
        ("default_autostop", -5),
        ("default_autostop", 1.5),
        ("default_autostop", True),
        ("den_url", "api.run.house"),
        ("den_url", "ftp://api.run.house"),
        ("default_provider", "ibm"),
        ("use_spot", "maybe"),
    ],
)
def test_invalid_value_is_refused_naming_key_and_value(rh_dir: Path, key: str, value: object):
    with pytest.raises(ConfigError, match=f"{key} must be .*, got {re.escape(repr(value))}$"):
        configs.set(key, value)
    assert not (rh_dir / "config.yaml").exists()


def test_autostop_error_says_what_is_expected():
    with pytest.raises(ConfigError) as caught:
        configs.set("default_autostop", "abc")
    assert str(caught.value) == "default_autostop must be an integer number of minutes (-1 = never), got 'abc'"


@pytest.mark.parametrize(
    ("key", "value", "stored"),
    [
        ("default_autostop", "30", 30),
        ("default_autostop", -1, -1),
        ("default_provider", "GCP", "gcp"),
        ("use_spot", "true", True),
        ("den_url", "https://api.run.house", "https://api.run.house"),
    ],
)
def test_valid_value_is_stored_in_its_type(rh_dir: Path, key: str, value: object, stored: object):
    configs.set(key, value)
    assert configs.get(key) == stored
    assert read_file(rh_dir)[key] == stored


def test_setting_none_removes_the_key(rh_dir: Path):
    configs.set("default_folder", "/ada/projects")
    configs.set("username", "ada")
    configs.set("default_folder", None)
    assert read_file(rh_dir) == {"username": "ada"}
    assert configs.get("default_folder") == "~"


def test_rh_token_overrides_the_token_on_get_but_is_never_written(rh_dir: Path, monkeypatch: pytest.MonkeyPatch):
    configs.set("token", "from-file")
    monkeypatch.setenv("RH_TOKEN", "from-env")
    assert configs.get("token") == "from-env"
    configs.set("username", "ada")
    assert read_file(rh_dir)["token"] == "from-file"
    assert configs.to_dict()["token"] == "from-file"

    configs.set("token", None)
    configs.set("username", "grace")
    assert configs.get("token") == "from-env"
    assert "token" not in read_file(rh_dir)
    assert "token" not in configs.to_dict()


def test_corrupt_yaml_raises_naming_the_file_and_is_not_reset(rh_dir: Path):
    rh_dir.mkdir()
    path = rh_dir / "config.yaml"
    path.write_text("username: ada\ntoken: [unclosed\n")
    with pytest.raises(ConfigError, match="config.yaml is not valid YAML") as caught:
        configs.get("username")
    assert str(path) in str(caught.value)
    with pytest.raises(ConfigError, match="not valid YAML"):
        configs.set("use_spot", True)
    assert path.read_text() == "username: ada\ntoken: [unclosed\n"


def test_invalid_setting_in_the_file_raises_naming_the_file_and_key(rh_dir: Path):
    rh_dir.mkdir()
    (rh_dir / "config.yaml").write_text("default_autostop: soon\n")
    with pytest.raises(ConfigError, match="default_autostop must be an integer") as caught:
        configs.load()
    assert str(rh_dir / "config.yaml") in str(caught.value)


def test_file_that_is_not_a_mapping_raises(rh_dir: Path):
    rh_dir.mkdir()
    (rh_dir / "config.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        configs.load()


def test_token_never_appears_in_repr_or_errors():
    configs.set("token", "secret-token")
    settings = configs.load()
    assert settings.token == "secret-token"
    assert configs.get("token") == "secret-token"
    for text in (repr(settings), str(settings), repr(configs), str(configs)):
        assert "secret-token" not in text
    Path(configs.path).write_text("token: {secret-token: 1}\n")
    with pytest.raises(ConfigError, match="token must be a string") as caught:
        configs.load()
    assert "secret-token" not in str(caught.value)


def test_unknown_key_must_be_plain_data():
    with pytest.raises(ConfigError, match="my_setting must be plain YAML data"):
        configs.set("my_setting", object())


def test_concurrent_sets_from_two_processes_keep_both_keys(rh_dir: Path):
    script = textwrap.dedent(
        """
        import sys
        from runhouse.config import Configs

        key, prefix = sys.argv[1], sys.argv[2]
        settings = Configs()
        for i in range(50):
            settings.set(key, f"{prefix}{i}")
        """
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", script, key, prefix], env=os.environ.copy())
        for key, prefix in (("username", "ada-"), ("default_ssh_key", "/keys/"))
    ]
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while any(writer.poll() is None for writer in writers) and time.monotonic() < deadline:
        configs.load()  # a reader never sees a half-written file
    for writer in writers:
        assert writer.wait(timeout=max(deadline - time.monotonic(), 1)) == 0

    assert read_file(rh_dir) == {"username": "ada-49", "default_ssh_key": "/keys/49"}
    assert not list(rh_dir.glob("*.tmp"))
