"""Secrets: provider credentials that follow the user between machines and clusters.

``rh.Secrets`` reads credentials where each provider keeps them (see
:mod:`runhouse.resources._secret_providers`), stores them in a secret store, writes them back as files on
this machine or a cluster, and ``rh.secret(...)`` names one as a resource. The store is Den (after
``rh.login``; values are encrypted at rest with Den's server key) or HashiCorp Vault's KV version 2 engine
(``rh.configs.set("secrets_backend", "vault")``, ``vault_url``, and ``VAULT_TOKEN``). Without a store,
``get`` reads this machine's files and ``save_provider_secrets``/``to(cluster)`` still work.

Values never appear in reprs, errors or logs: only provider names, secret names and file paths do.

Example::

    rh.Secrets.put("aws", from_env=True)                 # into Den
    rh.Secrets.download_into_env(["aws"])                # on another machine: ~/.aws/credentials, 0600
    rh.Secrets.to(gpu, providers=["aws", "huggingface"])
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Console

from runhouse.errors import ConfigError, MissingCredentialsError, ObjectNotFoundError
from runhouse.resources._secret_providers import BUILTIN, Files, Provider, find_provider, remove_files, write_files
from runhouse.resources.resource import Resource

if TYPE_CHECKING:
    from runhouse.resources.clusters.base import Cluster

_console = Console(stderr=True)
_INSTALL_NAME = "rh-secrets-write-files"
Report = dict[str, list[str]]


class SecretStore(abc.ABC):
    """Where secret values are kept, by name."""

    @abc.abstractmethod
    def put(self, name: str, provider: str, values: dict[str, Any]) -> None:
        """Store (or replace) ``values`` under ``name``."""

    @abc.abstractmethod
    def get(self, name: str) -> tuple[str, dict[str, Any]]:
        """The provider and values stored under ``name``; :class:`ObjectNotFoundError` if none."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Delete ``name``; :class:`ObjectNotFoundError` if it is not there."""

    @abc.abstractmethod
    def names(self) -> dict[str, str]:
        """Every stored name, to its provider."""


class DenSecretStore(SecretStore):
    """The logged-in user's secrets in Den (or an org's, ``owner=ORG``, for its members)."""

    def __init__(self, owner: str | None = None) -> None:
        from runhouse.rns.den_client import current_user, den_client

        self._client = den_client()
        self.owner = owner or current_user() or self._client.me()["name"]

    def put(self, name: str, provider: str, values: dict[str, Any]) -> None:
        self._client.put_secret(self.owner, name, provider, values)

    def get(self, name: str) -> tuple[str, dict[str, Any]]:
        found = self._client.get_secret(self.owner, name)
        return found["provider"], found["values"]

    def delete(self, name: str) -> None:
        self._client.delete_secret(self.owner, name)

    def names(self) -> dict[str, str]:
        return {entry["name"]: entry["provider"] for entry in self._client.list_secrets(self.owner)}


class VaultSecretStore(SecretStore):
    """HashiCorp Vault's KV version 2 engine, under ``runhouse/<name>`` of its mount (needs ``hvac``)."""

    PREFIX = "runhouse"

    def __init__(self, url: str, token: str, mount: str = "secret") -> None:
        try:
            import hvac
        except ImportError:
            raise ConfigError('the Vault secrets backend needs hvac: pip install "runhouse[vault]"') from None
        self._client = hvac.Client(url=url, token=token, timeout=30)
        self._kv = self._client.secrets.kv.v2
        self.mount = mount

    def put(self, name: str, provider: str, values: dict[str, Any]) -> None:
        self._kv.create_or_update_secret(path=f"{self.PREFIX}/{name}", mount_point=self.mount,
                                         secret={"provider": provider, "values": values})

    def get(self, name: str) -> tuple[str, dict[str, Any]]:
        import hvac.exceptions

        try:
            data = self._kv.read_secret_version(path=f"{self.PREFIX}/{name}", mount_point=self.mount,
                                                raise_on_deleted_version=True)["data"]["data"]
        except hvac.exceptions.InvalidPath:
            raise ObjectNotFoundError(f"Vault has no runhouse secret {name!r}") from None
        return data["provider"], data["values"]

    def delete(self, name: str) -> None:
        self.get(name)
        self._kv.delete_metadata_and_all_versions(path=f"{self.PREFIX}/{name}", mount_point=self.mount)

    def names(self) -> dict[str, str]:
        import hvac.exceptions

        try:
            keys = self._kv.list_secrets(path=self.PREFIX, mount_point=self.mount)["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            return {}
        return {key: self.get(key)[0] for key in keys if not key.endswith("/")}


def configured_store(owner: str | None = None) -> SecretStore | None:
    """The store ``rh.configs`` selects: Vault when chosen, else Den when logged in, else None.

    Raises:
        ConfigError: Vault is chosen without ``vault_url`` or ``VAULT_TOKEN``.
    """
    from runhouse.config import configs

    if configs.get("secrets_backend") == "vault":
        url, token = configs.get("vault_url"), os.environ.get("VAULT_TOKEN")
        if not url or not token:
            raise ConfigError("the Vault secrets backend needs rh.configs vault_url and the VAULT_TOKEN variable")
        return VaultSecretStore(url, token, configs.get("vault_mount") or "secret")
    if configs.get("den_url") and configs.get("token"):
        return DenSecretStore(owner)
    return None


def secret_store(owner: str | None = None) -> SecretStore:
    """The configured store (:func:`configured_store`).

    Raises:
        ConfigError: there is none: not logged in to Den, and Vault not chosen.
    """
    store = configured_store(owner)
    if store is None:
        raise ConfigError("storing secrets needs Den: log in with rh.login(...) (or set secrets_backend to vault); "
                          "without an account, Secrets.save_provider_secrets writes local files")
    return store


def _values_from(provider: Provider, from_env: bool, file_path: str | None,
                 secret: dict[str, Any] | None) -> dict[str, Any]:
    if sum((from_env, file_path is not None, secret is not None)) > 1:
        raise ConfigError("give one of from_env=True, file_path= or secret=")
    if secret is not None:
        if not isinstance(secret, dict) or not secret:
            raise ConfigError("secret= must be a non-empty dict of values")
        return dict(secret)
    if from_env:
        values = provider.from_env()
        if not values:
            names = sorted({name for names in provider.env.values() for name in names})
            raise MissingCredentialsError(f"no {provider.name} credentials in the environment ({', '.join(names)})")
        return values
    return provider.from_files(file_path) if file_path is not None else provider.read_local()


def _chosen(names: Iterable[str] | str | None, default: Iterable[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(default if names is None else names)


def _files(secrets: Iterable[tuple[str, dict[str, Any]]]) -> Files:
    """The files that hold each ``(provider, values)``."""
    files: Files = {}
    for provider, values in secrets:
        files.update(find_provider(provider).render(values))
    return files


def _say(report: Report, where: str) -> Report:
    for path in report["skipped"]:
        _console.print(f"kept existing {path}{where} (pass overwrite=True to replace it)")
    return report


class Secrets:
    """Provider credentials: detect, store, fetch, and write them where tools expect them."""

    @staticmethod
    def builtin_providers() -> list[str]:
        """The providers runhouse knows the files of."""
        return sorted(BUILTIN)

    @staticmethod
    def configured_providers() -> list[str]:
        """The built-in providers whose credentials are on this machine (files or environment)."""
        return [name for name, known in sorted(BUILTIN.items()) if known.is_configured()]

    @staticmethod
    def put(provider: str, from_env: bool = False, file_path: str | None = None,
            secret: dict[str, Any] | None = None, name: str | None = None, owner: str | None = None) -> str:
        """Store a provider's credentials under ``name`` (default: the provider's name); returns the name.

        Values come from ``secret``, the file at ``file_path``, the environment (``from_env``), or else what
        is on this machine.

        Raises:
            ConfigError: the values are not what the provider can write as its files (``download_into_env``,
                ``to(cluster)``); the message names the keys it expects.
        """
        known = find_provider(provider)
        values = known.check(_values_from(known, from_env, file_path, secret))
        name = name or provider
        secret_store(owner).put(name, provider, values)
        return name

    @staticmethod
    def get(provider: str, owner: str | None = None) -> dict[str, Any]:
        """The stored values of ``provider`` (a secret name), or this machine's when no store is set up.

        Raises:
            ObjectNotFoundError: the store has no such secret.
            MissingCredentialsError: no store, and nothing on this machine.
        """
        store = configured_store(owner)
        if store is None:
            return find_provider(provider).read_local()
        return store.get(provider)[1]

    @staticmethod
    def delete(provider: str, owner: str | None = None) -> None:
        """Delete a stored secret."""
        secret_store(owner).delete(provider)

    @staticmethod
    def names(owner: str | None = None) -> dict[str, str]:
        """The stored secrets' names, to their providers (never values)."""
        return secret_store(owner).names()

    @staticmethod
    def extract_and_upload(providers: Iterable[str] | str | None = None) -> list[str]:
        """Store the credentials found on this machine, for ``providers`` (default: every configured one)."""
        chosen = _chosen(providers, Secrets.configured_providers())
        return [Secrets.put(name) for name in chosen]

    @staticmethod
    def download_into_env(providers: Iterable[str] | str | None = None, overwrite: bool = False) -> Report:
        """Write stored credentials into their files here (0600), keeping existing files unless ``overwrite``.

        Returns ``{"written": [...], "skipped": [...]}``; skipped files are also named on stderr.
        """
        store = secret_store()
        files = _files(store.get(name) for name in _chosen(providers, store.names()))
        return _say(write_files(files, overwrite), "")

    @staticmethod
    def save_provider_secrets(secrets: dict[str, dict[str, Any]], overwrite: bool = False) -> Report:
        """Write ``{provider: values}`` into the providers' files here, with no account needed."""
        return _say(write_files(_files(secrets.items()), overwrite), "")

    @staticmethod
    def remove_local(providers: Iterable[str] | str | None = None) -> list[str]:
        """Delete the built-in providers' credential files from this machine; returns the files removed."""
        chosen = _chosen(providers, BUILTIN)
        return remove_files([path for name in chosen for path in find_provider(name).paths])

    @staticmethod
    def to(cluster: Cluster, providers: Iterable[str] | str | None = None, overwrite: bool = False) -> Report:
        """Write credentials into their files on ``cluster`` (same layout, 0600) through its daemon.

        Values come from the secret store when one is set up, else from this machine.
        """
        store = configured_store()
        default = store.names() if store is not None else Secrets.configured_providers()
        chosen = _chosen(providers, default)
        files = _files(store.get(name) if store is not None else (name, Secrets.get(name)) for name in chosen)
        return _say(_install(cluster, files, overwrite), f" on {cluster.name}")


def _install(cluster: Cluster, files: Files, overwrite: bool) -> Report:
    from runhouse.resources.function import Function

    report: Report = Function(write_files, _INSTALL_NAME).to(cluster)(files, overwrite)
    return report


class Secret(Resource):
    """One named set of credentials, e.g. ``rh.secret(provider="aws")``. Its config holds the name and
    provider only; the values live in the secret store and never in a config, repr or log."""

    RESOURCE_TYPE = "secret"

    def __init__(self, name: str | None = None, provider: str | None = None,
                 values: dict[str, Any] | None = None) -> None:
        super().__init__(name or provider)
        self.provider = provider or self.name or "custom"
        self._values = dict(values) if values is not None else None

    @property
    def values(self) -> dict[str, Any]:
        """The credentials: given, else from the store, else from this machine's files."""
        if self._values is None:
            self._values = Secrets.get(self.name or self.provider)
        return self._values

    def save(self, name: str | None = None) -> Secret:  # type: ignore[override]
        """Store the values in the secret store under ``name`` (default: this secret's name)."""
        self.name = name or self.name or self.provider
        Secrets.put(self.provider, secret=self.values, name=self.name)
        return self

    def write(self, overwrite: bool = False) -> Report:
        """Write the values into the provider's files on this machine."""
        return _say(write_files(_files([(self.provider, self.values)]), overwrite), "")

    def to(self, cluster: Cluster, overwrite: bool = False) -> Report:
        """Write the values into the provider's files on ``cluster``."""
        return _say(_install(cluster, _files([(self.provider, self.values)]), overwrite), f" on {cluster.name}")

    def delete_configs(self) -> bool:
        """Delete the stored secret; returns whether there was one."""
        try:
            Secrets.delete(self.name or self.provider)
        except ObjectNotFoundError:
            return False
        return True

    def config(self) -> dict[str, Any]:
        return {**super().config(), "provider": self.provider}

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> Secret:
        return cls(config.get("name"), config.get("provider"))

    def __repr__(self) -> str:
        return f"<Secret {self.name!r} provider={self.provider!r}>"


def secret(name: str | None = None, provider: str | None = None, values: dict[str, Any] | None = None) -> Secret:
    """A named set of credentials.

    Example::

        rh.secret(provider="huggingface").save()            # this machine's token, into the store
        rh.secret(name="huggingface").to(gpu)                # onto a cluster
        rh.secret(name="my-api", provider="my-api", values={"key": "..."}).save()
    """
    if values is None and provider is None and name is not None:  # load by name
        store = configured_store()
        if store is None:
            return Secret(name, name)
        provider, values = store.get(name)
    return Secret(name, provider, values)

