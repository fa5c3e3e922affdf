"""Buckets in s3 and gs: :class:`ObjectStoreSystem`, through fsspec (``s3fs`` / ``gcsfs``, the optional extras
``runhouse[s3]`` / ``runhouse[gs]``). Imported by the registry only when a bucket is named."""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from typing import IO, Any

from runhouse.errors import ConfigError, MissingCredentialsError, ObjectNotFoundError
from runhouse.resources.data.base import Advance, DataSystem, batches_by_size, not_found_error
from runhouse.resources.data.registry import missing_dependency_error

# The stores this class serves, each with the rh.Secrets secret it takes its credentials from.
_SECRET_NAMES = {"s3": "aws", "gs": "gcp"}
# Options that hold credentials: used, never written into a resource's config.
_SECRET_OPTIONS = frozenset({"key", "secret", "token", "password", "client_secret", "access_token", "credentials"})
logger = logging.getLogger(__name__)


def default_bucket_name(user: str) -> str:
    """``runhouse-<user>`` as a valid bucket name (lowercase letters, digits and dashes, 3-63 characters)."""
    slug = re.sub(r"[^a-z0-9]+", "-", user.lower()).strip("-") or "user"
    return f"runhouse-{slug}"[:63].rstrip("-")


def stored_credentials(kind: str) -> dict[str, Any]:
    """The store's ``aws`` (s3) or ``gcp`` (gs) secret as fsspec options; empty when there is none, or no store."""
    from runhouse.resources.secret import configured_store

    store = configured_store()
    if store is None:
        return {}
    try:
        _, values = store.get(_SECRET_NAMES[kind])
    except ObjectNotFoundError:
        return {}
    if kind == "s3":
        return {"key": values.get("access_key"), "secret": values.get("secret_key")}
    return {"token": values.get("credentials")}


class ObjectStoreSystem(DataSystem):
    """A bucket in s3 or gs through fsspec (``s3fs`` / ``gcsfs``, installed with ``runhouse[s3]`` / ``[gs]``).

    Credentials, first found wins: ``credentials`` or ``key``/``secret``/``token`` in ``storage_options``;
    the ``aws`` (for s3) or ``gcp`` (for gs) secret in ``rh.Secrets``' store, when one is set up (Den after
    ``rh.login``, or Vault); then what s3fs or gcsfs find by themselves (the ``AWS_*`` env vars, ``~/.aws``
    files, instance roles; gcloud's defaults). They are used like storage options but never written into a
    config. ``bucket`` is where default locations go (``BUCKET/runhouse/...``); without it the
    ``default_bucket`` setting of ``rh.configs``, else ``runhouse-<user>`` (the Den user name, or this
    machine's login), made on the first write to it, which the log says.
    """

    def __init__(
        self,
        kind: str,
        storage_options: Mapping[str, Any] | None = None,
        bucket: str | None = None,
        credentials: Mapping[str, Any] | None = None,
    ) -> None:
        if kind not in _SECRET_NAMES:
            raise ConfigError(f"unknown object store {kind!r}: use 's3' or 'gs'")
        self.kind = kind
        self.storage_options = dict(storage_options or {})
        self.bucket = bucket
        self._credentials = dict(credentials or {})
        self._unmade_bucket: str | None = None  # the per-user default bucket, until the first write checks it

    @classmethod
    def from_name(
        cls, name: str, location: str | None = None, storage_options: Mapping[str, Any] | None = None
    ) -> ObjectStoreSystem:
        """The store ``name`` ("s3", "gs"); ``location`` (from ``"s3://BUCKET"``) is the bucket of defaults."""
        return cls(name, storage_options, bucket=location)

    def describe(self) -> str:
        return self.kind

    def config_fields(self) -> dict[str, Any]:
        """``system`` and the storage options safe to write into a config (credentials left out)."""
        public = {k: v for k, v in self.storage_options.items() if k not in _SECRET_OPTIONS}
        return {"system": self.kind, "storage_options": public}

    @functools.cached_property
    def fs(self) -> Any:
        """The fsspec filesystem (imported on first use)."""
        import fsspec

        try:
            # Not fsspec's shared instance: credentials are read when it is made, and must be re-read here.
            credentials = self._credentials
            if not credentials and not _SECRET_OPTIONS & set(self.storage_options):
                credentials = stored_credentials(self.kind)
            options = {**self.storage_options, **credentials, "skip_instance_cache": True}
            return fsspec.filesystem(self.kind, **options)
        except ImportError as exc:
            raise missing_dependency_error(self.kind) from exc

    def normalize(self, path: str) -> str:
        prefix = f"{self.kind}://"
        return (path[len(prefix) :] if path.startswith(prefix) else path).rstrip("/")

    def data_root(self) -> str:
        from runhouse.config import configs
        from runhouse.rns.den_client import current_user

        bucket = self.bucket or configs.get("default_bucket")
        if not bucket:
            bucket = default_bucket_name(current_user() or getpass.getuser())
            self._unmade_bucket = bucket
        return f"{bucket}/runhouse"

    def _make_default_bucket(self) -> None:
        """Create the per-user default bucket before the first write when it does not exist, saying so."""
        bucket = self._unmade_bucket
        if bucket is None:
            return
        if not self.fs.exists(bucket):
            self.fs.mkdir(bucket)
            logger.warning(
                "runhouse created the %s bucket %r for default locations (choose another with "
                "rh.configs.set('default_bucket', 'BUCKET'))", self.kind, bucket)
        self._unmade_bucket = None

    def same_storage(self, other: DataSystem) -> bool:
        return (
            isinstance(other, ObjectStoreSystem)
            and other.kind == self.kind
            and other.storage_options == self.storage_options
        )

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        """Turn fsspec's errors for missing paths and missing credentials into runhouse's."""
        try:
            yield
        except FileNotFoundError as exc:
            raise not_found_error(self, path, exc) from None
        except Exception as exc:
            if "credential" in type(exc).__name__.lower() or "credentials" in str(exc).lower():
                raise MissingCredentialsError(
                    f"no credentials for {self.kind!r} ({exc}). For s3 store them with rh.Secrets.put('aws', ...), "
                    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials), or pass "
                    "storage_options={'key': ..., 'secret': ...}."
                ) from exc
            raise

    def exists(self, path: str) -> bool:
        with self._errors(path):
            return bool(self.fs.exists(path))

    def walk(self, path: str) -> dict[str, int]:
        with self._errors(path):
            found = self.fs.find(path, detail=True)
            if not found and not self.fs.isdir(path):
                raise not_found_error(self, path)
        base = path.rstrip("/") + "/"
        return {key[len(base) :]: int(info["size"]) for key, info in found.items() if key.startswith(base)}

    def ls(self, path: str) -> list[str]:
        with self._errors(path):
            if not self.fs.isdir(path):
                raise not_found_error(self, path)
            return sorted(posixpath.basename(entry.rstrip("/")) for entry in self.fs.ls(path, detail=False))

    def size(self, path: str) -> int:
        with self._errors(path):
            if not self.fs.isfile(path):
                raise not_found_error(self, path)
            return int(self.fs.size(path))

    def read(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        with self._errors(path):
            end = None if length < 0 else offset + length
            return bytes(self.fs.cat_file(path, start=offset or None, end=end))

    def write(self, path: str, data: bytes) -> None:
        with self._errors(path):
            self._make_default_bucket()
            self.fs.pipe_file(path, bytes(data))

    def mkdir(self, path: str) -> None:
        with self._errors(path):
            self._make_default_bucket()
            self.fs.makedirs(path, exist_ok=True)

    def rm(self, path: str) -> bool:
        with self._errors(path):
            if not self.fs.exists(path):
                return False
            self.fs.rm(path, recursive=True)
            self.fs.invalidate_cache()
            return True

    def replace(self, source: str, destination: str) -> None:
        with self._errors(source):
            self.rm(destination)
            if self.fs.isdir(source):
                names = list(self.walk(source))
                self.fs.copy([f"{source}/{n}" for n in names], [f"{destination}/{n}" for n in names])
            else:
                self.fs.copy(source, destination)
            self.rm(source)

    def copy(self, root: str, names: list[str], destination: str) -> None:
        with self._errors(root):
            self._make_default_bucket()
            self.fs.copy([f"{root}/{n}" for n in names], [f"{destination}/{n}" for n in names])
            self.fs.invalidate_cache()

    def download(self, root: str, files: Mapping[str, int], local_root: str, advance: Advance) -> None:
        with self._errors(root):
            for batch in batches_by_size(files):
                for name in batch:
                    os.makedirs(os.path.dirname(os.path.join(local_root, name)), exist_ok=True)
                self.fs.get([f"{root}/{n}" for n in batch], [os.path.join(local_root, n) for n in batch])
                advance(sum(files[n] for n in batch))

    def upload(self, local_root: str, files: Mapping[str, int], root: str, advance: Advance) -> None:
        with self._errors(root):
            self._make_default_bucket()
            for batch in batches_by_size(files):
                self.fs.put([os.path.join(local_root, n) for n in batch], [f"{root}/{n}" for n in batch])
                advance(sum(files[n] for n in batch))
            self.fs.invalidate_cache()

    def open(self, path: str, mode: str = "rb") -> IO[Any]:
        with self._errors(path):
            if mode[0] == "r" and not self.fs.isfile(path):
                raise not_found_error(self, path)
            if mode[0] != "r":
                self._make_default_bucket()
            return self.fs.open(path, mode)  # type: ignore[no-any-return]
