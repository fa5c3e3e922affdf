"""The user's settings: ``config.yaml`` in the runhouse folder (see :mod:`runhouse.paths`), as a typed model.

Imported only where settings are needed (it loads pydantic, which the daemon and workers do without).
Read and written through :data:`configs`::

    from runhouse.config import configs

    configs.set("default_autostop", 60)   # validated, then written atomically with mode 0600
    configs.get("default_autostop")       # 60
    configs.set("default_autostop", None)  # removes the key: back to the default

``RH_TOKEN`` and ``RH_DEN_URL``, when set, override the file's ``token`` and ``den_url`` for
:meth:`Configs.get` and are never written.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from runhouse.errors import ConfigError
from runhouse.paths import _config_dir_path, write_atomic

if sys.platform != "win32":
    import fcntl

CONFIG_FILE_NAME = "config.yaml"

Provider = Literal["aws", "gcp", "azure", "lambda", "kubernetes", "cheapest"]
PROVIDERS: tuple[str, ...] = get_args(Provider)

# What each setting must be, for error messages: "<key> must be <this>, got <value>".
_EXPECTED: dict[str, str] = {
    "token": "a string",
    "username": "a string",
    "den_url": "an http:// or https:// URL",
    "default_folder": "a string",
    "default_provider": "one of " + ", ".join(PROVIDERS),
    "default_autostop": "an integer number of minutes (-1 = never)",
    "use_spot": "true or false",
    "default_ssh_key": "a string (path of a private key)",
    "quiet": "true or false",
}

# Settings that belong to this machine's login, never copied to or from Den's defaults.
LOCAL_ONLY_SETTINGS = frozenset({"token", "den_url", "username"})

# Settings whose value must never be echoed in errors or reprs.
_SECRET_KEYS = frozenset({"token"})
_MASK = "**********"


class Settings(BaseModel):
    """The user's settings: the typed fields below, plus any unknown keys, kept as they are.

    ``repr``/``str`` mask the token; ``settings.token`` is the plain string.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    token: str | None = None
    """Den API token (``RH_TOKEN`` overrides it for :meth:`Configs.get`)."""
    username: str | None = None
    den_url: str | None = None
    """Base URL of the Den server, ``http://`` or ``https://``."""
    default_folder: str = "~"
    """Folder that relative resource names live in."""
    default_provider: Provider | None = None
    """Cloud new clusters are launched on; ``cheapest`` lets the launcher choose."""
    default_autostop: int | None = None
    """Minutes of inactivity before a cluster stops itself; -1 means never."""
    use_spot: bool = False
    default_ssh_key: str | None = None
    """Path of the private key used to reach clusters."""
    quiet: bool = False
    """Hide progress (bring-up steps, env installs, transfer bars); ``RH_QUIET=1`` does it for one process."""
    secrets_backend: Literal["den", "vault"] = "den"
    """Where rh.Secrets stores values: Den (after rh.login) or HashiCorp Vault (``vault_url``, ``VAULT_TOKEN``)."""
    vault_url: str | None = None
    vault_mount: str = "secret"
    """Mount point of the KV version 2 engine in Vault."""

    @field_validator("den_url")
    @classmethod
    def _den_url_is_http(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("not an http:// or https:// URL")
        return value

    @field_validator("default_provider", mode="before")
    @classmethod
    def _provider_is_lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("default_autostop", mode="before")
    @classmethod
    def _autostop_is_whole_minutes(cls, value: Any) -> Any:
        # Strict by hand: pydantic's lax mode would take True as 1 and reject nothing below -1.
        if value is None:
            return None
        minutes: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            minutes = value
        elif isinstance(value, float) and value.is_integer():
            minutes = int(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                minutes = int(value.strip())
        if minutes is None or minutes < -1:
            raise ValueError("not an integer number of minutes >= -1")
        return minutes

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (_MASK if name in _SECRET_KEYS and value is not None else value)


def _describe(key: str, value: Any) -> str:
    """``value`` as it may appear in an error message: secrets by type only."""
    return f"a value of type {type(value).__name__}" if key in _SECRET_KEYS else repr(value)


def _validation_message(exc: ValidationError, data: dict[str, Any]) -> str:
    """One clause per failing setting of ``data``: what it must be, and what it was."""
    lines = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else "config"
        expected = _EXPECTED.get(key)
        got = _describe(key, data.get(key, error.get("input")))  # as given, before any normalizing
        lines.append(f"{key} must be {expected}, got {got}" if expected else f"{key}: {error['msg']}, got {got}")
    return "; ".join(lines)


def _file_data(settings: Settings) -> dict[str, Any]:
    """What ``settings`` writes to the file: every key given explicitly, unknown ones included, none null."""
    return settings.model_dump(exclude_unset=True, exclude_none=True)


class Configs:
    """The user's settings file (``config_dir() / "config.yaml"``); use the module-level :data:`configs`.

    Every read goes to disk, so a ``set`` in one process is seen by the next ``get`` in any other.
    Writes replace the file atomically (mode 0600) under an exclusive lock on ``config.yaml.lock``, so
    concurrent ``set`` calls from several processes all survive (POSIX; on Windows there is no lock and
    concurrent writers may lose each other's updates, though the file stays valid).

    Args:
        path: The settings file; by default ``config.yaml`` in the runhouse folder, looked up on each use
            so that changing ``RH_CONFIG_DIR`` takes effect.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = Path(path).expanduser() if path is not None else None

    @property
    def path(self) -> Path:
        """The settings file (it need not exist)."""
        return self._path if self._path is not None else _config_dir_path() / CONFIG_FILE_NAME

    def __repr__(self) -> str:
        return f"Configs(path={str(self.path)!r})"

    def load(self) -> Settings:
        """The settings in the file (defaults when it does not exist); ``RH_TOKEN`` is not applied.

        Raises:
            ConfigError: The file is not valid YAML, not a mapping, or holds an invalid setting.
        """
        return self._validate(self._read(), source=str(self.path))

    def save(self, settings: Settings) -> None:
        """Write ``settings`` to the file, replacing it atomically."""
        with self._locked():
            self._write(_file_data(settings))

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``: ``$RH_TOKEN`` for ``token`` (``$RH_DEN_URL`` for ``den_url``) when set, else
        the file's, else ``default``.

        Known settings that are unset give their model default (``default_folder`` is ``"~"``, ``use_spot``
        is False) or, where that is None, ``default``. Unknown keys give their stored value or ``default``.
        """
        if key == "token" and os.environ.get("RH_TOKEN"):
            return os.environ["RH_TOKEN"]
        if key == "den_url" and os.environ.get("RH_DEN_URL"):
            return os.environ["RH_DEN_URL"]
        settings = self.load()
        if key in Settings.model_fields:
            value = getattr(settings, key)
        else:
            value = (settings.model_extra or {}).get(key)
        return default if value is None else value

    def set(self, key: str, value: Any) -> None:
        """Validate ``value`` for ``key`` and write it; ``None`` removes the key (back to its default).

        Keys the model does not know are stored as given (plain YAML data only).

        Raises:
            ConfigError: ``value`` is not valid for ``key`` (the message says what is expected), or the
                file is already invalid (it is never reset silently).
        """
        if not isinstance(key, str) or not key:
            raise ConfigError(f"setting names are non-empty strings, got {key!r}")
        with self._locked():
            data = _file_data(self.load())
            if value is None:
                if key not in data:
                    return
                del data[key]
            else:
                _check_plain_data(key, value)
                data[key] = value
            self._write(_file_data(self._validate(data, source=None)))

    def to_dict(self) -> dict[str, Any]:
        """The settings as they would be written: explicit keys only, never a token from ``RH_TOKEN`` alone."""
        return _file_data(self.load())

    # --- primitives ---------------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        """The file's mapping, ``{}`` when it does not exist or is empty."""
        path = self.path
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"cannot read the runhouse config file {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            # Only the problem and its position: the YAML snippet could show the token.
            problem = getattr(exc, "problem", None) or type(exc).__name__
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise ConfigError(
                f"the runhouse config file {path} is not valid YAML: {problem}{where}; "
                "fix it, or delete it to start from the defaults"
            ) from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"the runhouse config file {path} must hold a mapping of settings, got a {type(data).__name__}; "
                "fix it, or delete it to start from the defaults"
            )
        bad_keys = [key for key in data if not isinstance(key, str)]
        if bad_keys:
            raise ConfigError(f"the runhouse config file {path} has setting names that are not strings: {bad_keys!r}")
        return data

    @staticmethod
    def _validate(data: dict[str, Any], source: str | None) -> Settings:
        """``data`` as :class:`Settings`; ``source`` names the file when the data came from it."""
        try:
            return Settings.model_validate(data)
        except ValidationError as exc:
            # ``from None``: pydantic's own message would echo the rejected value, even a token.
            message = _validation_message(exc, data)
            if source is not None:
                message = f"the runhouse config file {source} is invalid: {message}; fix it, or delete the key"
            raise ConfigError(message) from None

    def _write(self, data: dict[str, Any]) -> None:
        """Replace the file with ``data`` atomically; the file never exists with a mode wider than 0600."""
        try:
            text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
        except yaml.YAMLError:
            raise ConfigError(
                "cannot write the runhouse settings: every value must be plain YAML data "
                "(strings, numbers, booleans, lists, mappings)"
            ) from None
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, text, mode=0o600)  # never more readable than 0600: it holds the token

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock on ``<file>.lock`` across a read-modify-write."""
        if sys.platform == "win32":
            yield
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _check_plain_data(key: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` can be written as plain YAML."""
    try:
        yaml.safe_dump(value)
    except yaml.YAMLError:
        raise ConfigError(
            f"{key} must be plain YAML data (strings, numbers, booleans, lists, mappings), "
            f"got a value of type {type(value).__name__}"
        ) from None


configs = Configs()
"""The user's settings file, ``config.yaml`` in the runhouse folder."""
