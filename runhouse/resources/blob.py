"""Blobs: one file of bytes on a data system, written whole and atomically, read whole or streamed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from runhouse.resources.data.registry import documented_location
from runhouse.resources.folder import DataResource


class Blob(DataResource):
    """Bytes kept as one file on a data system.

    ``data`` given at creation stays in memory until :meth:`write`; :attr:`data` reads the file when it is
    not in memory. Without a path, the blob lives at ``~/.cache/runhouse/blobs/<name>`` (this machine or
    the cluster) or ``BUCKET/runhouse/blobs/<name>``.
    """

    RESOURCE_TYPE = "blob"
    DEFAULT_FOLDER = "blobs"
    SINGLE_FILE = True

    def __init__(
        self,
        data: bytes | None = None,
        path: str | None = None,
        system: Any = None,
        name: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(path=path, system=system, name=name, storage_options=storage_options)
        self._data = data
        self._written = False

    @property
    def data(self) -> bytes:
        """The blob's bytes (read from its system when not in memory)."""
        if self._data is None:
            return self.fetch()
        return self._data

    @data.setter
    def data(self, value: bytes) -> None:
        self._data, self._written = value, False

    def write(self, data: bytes | None = None) -> Blob:
        """Write the blob's data (or ``data``) to its path, replacing the file whole; a named blob is saved
        under its name too (``rh.blob(name=...)`` finds it). Returns self."""
        if data is not None:
            self.data = data
        if self._data is None:
            raise ValueError(f"blob {self.name or self.path!r} has no data to write")
        self.system.write_atomic(self.path, self._data)
        self._written = True
        if self.name:
            self.save()
        return self

    def fetch(self) -> bytes:
        """Read the whole file from its system (and keep it in memory)."""
        self._data = self.system.read(self.path)
        self._written = True
        return self._data

    def open(self, mode: str = "rb") -> IO[Any]:
        """The file, streamed: for blobs too large for memory (``rb``, ``wb``, ``ab``; text modes too)."""
        if mode[0] != "r":
            self._data = None  # what is written bypasses the copy in memory
        return self.system.open(self.path, mode)

    def rm(self) -> bool:
        """Remove the file; returns whether there was one. The copy in memory is kept."""
        return self.system.rm(self.path)

    def _write_pending(self) -> bool:
        return self._data is not None and not self._written


def blob(
    data: bytes | None = None,
    name: str | None = None,
    path: str | None = None,
    system: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    dryrun: bool = False,
    url: str | None = None,
    fs: Any = None,
) -> Blob:
    """Bytes stored as one file on ``system`` ("file" by default, a cluster, "s3", "gs").

    ``url`` and ``fs`` are Runhouse's documented names for ``path`` and ``system``. Called with only a name,
    loads the blob saved under it.

    Example::

        rh.blob(data=b"weights", name="w", system="file").write().save()
        rh.blob(name="w").data                  # b"weights"
        rh.blob(name="w").to(gpu)               # the same bytes on the cluster
    """
    path, system = documented_location(path, url, system, fs)
    if name is not None and data is None and path is None and system is None:
        from runhouse.resources.resource import load_typed

        return load_typed(Blob, name, dryrun=dryrun)
    return Blob(data=data, path=path, system=system, name=name, storage_options=storage_options)
