"""Where each provider keeps its credentials on a machine, and how to read and write them.

A provider turns the files (and environment variables) a tool reads into a dict of values, and a dict of
values back into those files, as ``{"~/relative/path": text}`` so the same files can be written on this
machine or on a cluster. Providers that are not built in ("custom") have values but no files.

=============  ====================================================  ============================
provider       files                                                 environment variables
=============  ====================================================  ============================
aws            ~/.aws/credentials                                    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
gcp            ~/.config/gcloud/application_default_credentials.json GOOGLE_APPLICATION_CREDENTIALS (a file)
azure          ~/.azure/clouds.config                                AZURE_SUBSCRIPTION_ID
lambda         ~/.lambda_cloud/lambda_keys                           LAMBDA_API_KEY
huggingface    ~/.cache/huggingface/token                            HF_TOKEN
github         ~/.config/gh/hosts.yml                                GH_TOKEN, GITHUB_TOKEN
ssh            ~/.ssh/<key> and <key>.pub (id_ed25519, id_rsa, ...)
sky            ~/.sky/sky-key and sky-key.pub
=============  ====================================================  ============================
"""

from __future__ import annotations

import configparser
import io
import json
import os
from pathlib import Path
from typing import Any

import yaml

from runhouse.errors import ConfigError, MissingCredentialsError
from runhouse.paths import write_atomic

Files = dict[str, str]
"""``{"~/relative/path": text}``: what a provider writes."""


def home_path(path: str) -> Path:
    """``~/a/b`` under this machine's home folder."""
    return Path.home() / path.removeprefix("~/")


class Provider:
    """One kind of credentials. Subclasses set ``name``, the value keys, and fill in :meth:`parse` and
    :meth:`render`."""

    name: str = ""
    paths: tuple[str, ...] = ()
    """The files, ``~/...``; the first one present means the provider is configured here."""
    env: dict[str, tuple[str, ...]] = {}
    """Value key -> the environment variables that may hold it, first found wins."""
    required: tuple[str, ...] = ()
    """The value keys :meth:`render` needs, each non-empty text."""
    optional: tuple[str, ...] = ()
    """Value keys :meth:`render` uses when present, each text."""

    def is_configured(self) -> bool:
        """Whether credentials of this provider are on this machine (files or environment)."""
        return bool(self.from_env()) or any(home_path(path).exists() for path in self.paths)

    def from_env(self) -> dict[str, Any]:
        """The values set in environment variables (empty unless every key is set)."""
        values = {}
        for key, names in self.env.items():
            found = next((os.environ[name] for name in names if os.environ.get(name)), None)
            if found is None:
                return {}
            values[key] = found
        return values

    def from_files(self, file_path: str | None = None) -> dict[str, Any]:
        """The values in the provider's files (``file_path`` instead of the first one, when given).

        Raises:
            MissingCredentialsError: the files are not there.
        """
        paths = [file_path, *self.paths[1:]] if file_path else list(self.paths)
        texts = {}
        for role, path in zip(self.paths, paths, strict=True):
            local = home_path(path) if path.startswith("~/") else Path(path).expanduser()
            if local.exists():
                texts[role] = local.read_text()
        if not texts:
            raise MissingCredentialsError(f"no {self.name} credentials in {', '.join(paths)}")
        return self.parse(texts)

    def read_local(self) -> dict[str, Any]:
        """The values found on this machine: environment variables first, then files."""
        return self.from_env() or self.from_files()

    def parse(self, texts: Files) -> dict[str, Any]:
        """Values from the texts of the files present, keyed by their ``paths`` entry."""
        raise NotImplementedError

    def render(self, values: dict[str, Any]) -> Files:
        """The files that hold ``values``; :class:`ConfigError` (from :meth:`check`) if it cannot write them."""
        raise NotImplementedError

    def check(self, values: object) -> dict[str, Any]:
        """``values`` if :meth:`render` can write them (and a secret store can keep them as JSON).

        Raises:
            ConfigError: naming the provider, the keys it expects and what is wrong.
        """
        if not isinstance(values, dict) or not values:
            raise self._invalid(f"got {type(values).__name__ if values else 'nothing'}, not a dict of values")
        missing = [key for key in self.required if not values.get(key)]
        if missing:
            raise self._invalid(f"missing {', '.join(missing)}")
        problems = [self._problem(key, values[key]) for key in (*self.required, *self.optional)
                    if values.get(key) is not None]
        if any(problems):
            raise self._invalid("; ".join(problem for problem in problems if problem))
        try:
            json.dumps(values, allow_nan=False, ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise self._invalid(f"the values must be plain JSON (text, numbers, lists, dicts): {exc}") from None
        return values

    def _problem(self, key: str, value: Any) -> str | None:
        """What is wrong with ``value`` under ``key`` (None if nothing): by default it must be text."""
        return None if isinstance(value, str) else f"{key} is {type(value).__name__}, not text"

    def _invalid(self, problem: str) -> ConfigError:
        keys = " and ".join(self.required) or "a non-empty dict of values"
        extra = f" (optional: {', '.join(self.optional)})" if self.optional else ""
        return ConfigError(f"{self.name} secrets need {keys}{extra}; {problem}")


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def _ini_text(section: str, items: dict[str, str]) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser[section] = items
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()


class AWS(Provider):
    name = "aws"
    paths = ("~/.aws/credentials",)
    env = {"access_key": ("AWS_ACCESS_KEY_ID",), "secret_key": ("AWS_SECRET_ACCESS_KEY",)}
    required = ("access_key", "secret_key")

    def parse(self, texts: Files) -> dict[str, Any]:
        parser = _ini(texts[self.paths[0]])
        section = parser["default"] if parser.has_section("default") else parser[parser.sections()[0]]
        return {"access_key": section.get("aws_access_key_id"), "secret_key": section.get("aws_secret_access_key")}

    def render(self, values: dict[str, Any]) -> Files:
        self.check(values)
        items = {"aws_access_key_id": values["access_key"], "aws_secret_access_key": values["secret_key"]}
        return {self.paths[0]: _ini_text("default", items)}


class GCP(Provider):
    name = "gcp"
    paths = ("~/.config/gcloud/application_default_credentials.json",)
    required = ("credentials",)

    def from_env(self) -> dict[str, Any]:
        path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        return {"credentials": json.loads(Path(path).read_text())} if path and Path(path).is_file() else {}

    def parse(self, texts: Files) -> dict[str, Any]:
        return {"credentials": json.loads(texts[self.paths[0]])}

    def _problem(self, key: str, value: Any) -> str | None:
        if isinstance(value, dict):
            return None
        try:
            if isinstance(value, str) and isinstance(json.loads(value), dict):
                return None
        except ValueError:
            pass
        return f"{key} must be a dict or the text of a JSON object (got {type(value).__name__} that is not)"

    def render(self, values: dict[str, Any]) -> Files:
        credentials = self.check(values)["credentials"]
        text = credentials if isinstance(credentials, str) else json.dumps(credentials, indent=2)
        return {self.paths[0]: text}


class Azure(Provider):
    name = "azure"
    paths = ("~/.azure/clouds.config",)
    env = {"subscription_id": ("AZURE_SUBSCRIPTION_ID",)}
    required = ("subscription_id",)

    def parse(self, texts: Files) -> dict[str, Any]:
        return {"subscription_id": _ini(texts[self.paths[0]]).get("AzureCloud", "subscription", fallback=None)}

    def render(self, values: dict[str, Any]) -> Files:
        return {self.paths[0]: _ini_text("AzureCloud", {"subscription": self.check(values)["subscription_id"]})}


class Lambda(Provider):
    name = "lambda"
    paths = ("~/.lambda_cloud/lambda_keys",)
    env = {"api_key": ("LAMBDA_API_KEY",)}
    required = ("api_key",)

    def parse(self, texts: Files) -> dict[str, Any]:
        pairs = dict(line.split("=", 1) for line in texts[self.paths[0]].splitlines() if "=" in line)
        return {"api_key": next((v.strip() for k, v in pairs.items() if k.strip() == "api_key"), None)}

    def render(self, values: dict[str, Any]) -> Files:
        return {self.paths[0]: f"api_key = {self.check(values)['api_key']}\n"}


class HuggingFace(Provider):
    name = "huggingface"
    paths = ("~/.cache/huggingface/token",)
    env = {"token": ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    required = ("token",)

    def parse(self, texts: Files) -> dict[str, Any]:
        return {"token": texts[self.paths[0]].strip()}

    def render(self, values: dict[str, Any]) -> Files:
        return {self.paths[0]: self.check(values)["token"]}


class GitHub(Provider):
    name = "github"
    paths = ("~/.config/gh/hosts.yml",)
    env = {"oauth_token": ("GH_TOKEN", "GITHUB_TOKEN")}
    required = ("oauth_token",)

    def parse(self, texts: Files) -> dict[str, Any]:
        hosts = yaml.safe_load(texts[self.paths[0]]) or {}
        return {"oauth_token": (hosts.get("github.com") or {}).get("oauth_token")}

    def render(self, values: dict[str, Any]) -> Files:
        return {self.paths[0]: yaml.safe_dump({"github.com": {"oauth_token": self.check(values)["oauth_token"]}})}


class KeyPair(Provider):
    """A private key file and its ``.pub`` beside it."""

    required = ("private_key",)
    optional: tuple[str, ...] = ("public_key",)

    def parse(self, texts: Files) -> dict[str, Any]:
        private, public = self.paths
        if private not in texts:
            raise MissingCredentialsError(f"no {self.name} private key at {private}")
        return {"private_key": texts[private], "public_key": texts.get(public, "")}

    def render(self, values: dict[str, Any]) -> Files:
        private_path, public_path = self.key_paths(self.check(values))
        files = {private_path: values["private_key"]}
        if values.get("public_key"):
            files[public_path] = values["public_key"]
        return files

    def key_paths(self, values: dict[str, Any]) -> tuple[str, ...]:
        """Where ``values`` are written: the private key's path and its ``.pub``."""
        return self.paths


class Sky(KeyPair):
    name = "sky"
    paths = ("~/.sky/sky-key", "~/.sky/sky-key.pub")


class SSH(KeyPair):
    """``~/.ssh/<key>``: the first of the usual key names found, or the key named in the values."""

    name = "ssh"
    KEY_NAMES = ("id_ed25519", "id_rsa", "id_ecdsa")
    optional = ("public_key", "key_name")

    @property
    def paths(self) -> tuple[str, ...]:  # type: ignore[override]
        key = next((name for name in self.KEY_NAMES if home_path(f"~/.ssh/{name}").exists()), self.KEY_NAMES[0])
        return (f"~/.ssh/{key}", f"~/.ssh/{key}.pub")

    def from_files(self, file_path: str | None = None) -> dict[str, Any]:
        values = super().from_files(file_path)
        return {**values, "key_name": Path(file_path or self.paths[0]).name}

    def _problem(self, key: str, value: Any) -> str | None:
        if key == "key_name" and isinstance(value, str) and ("/" in value or value.startswith(".")
                                                             or not value.isprintable()):
            return f"key_name must be a plain file name in ~/.ssh, not {value!r}"
        return super()._problem(key, value)

    def key_paths(self, values: dict[str, Any]) -> tuple[str, ...]:
        key = values.get("key_name") or self.KEY_NAMES[0]
        return (f"~/.ssh/{key}", f"~/.ssh/{key}.pub")


class Custom(Provider):
    """Any other name: values only, kept in the secret store, no files."""

    def __init__(self, name: str) -> None:
        self.name = name

    def is_configured(self) -> bool:
        return False

    def from_files(self, file_path: str | None = None) -> dict[str, Any]:
        if file_path is None:
            raise MissingCredentialsError(f"{self.name!r} is a custom provider: give its values with secret={{...}}")
        return dict(json.loads(Path(file_path).expanduser().read_text()))

    def render(self, values: dict[str, Any]) -> Files:
        return {}


BUILTIN: dict[str, Provider] = {p.name: p for p in (AWS(), GCP(), Azure(), Lambda(), HuggingFace(), GitHub(),
                                                     SSH(), Sky())}


def find_provider(name: str) -> Provider:
    """The built-in provider ``name``, or a custom one."""
    return BUILTIN.get(name) or Custom(name)


def write_files(files: Files, overwrite: bool = False) -> dict[str, list[str]]:
    """Write ``files`` under this machine's home folder with mode 0600 (folders 0700), atomically.

    Existing files are kept unless ``overwrite``. Returns ``{"written": [...], "skipped": [...]}`` (paths as
    given). Runs on clusters too, as a deployed function.
    """
    report: dict[str, list[str]] = {"written": [], "skipped": []}
    for path, text in files.items():
        if not path.startswith("~/") or ".." in Path(path).parts:
            raise ConfigError(f"secret files live under the home folder, not at {path!r}")
        target = home_path(path)
        if target.exists() and not overwrite:
            report["skipped"].append(path)
            continue
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(target, text, mode=0o600)
        report["written"].append(path)
    return report


def remove_files(paths: list[str]) -> list[str]:
    """Delete the given ``~/...`` files that exist; returns those removed."""
    removed = []
    for path in paths:
        target = home_path(path)
        if target.is_file():
            target.unlink()
            removed.append(path)
    return removed
