"""Folders: a tree of files on a data system (this machine, a cluster, s3, gs), and the base of every data
resource (:class:`DataResource`: a path on a system, moved with ``.to``)."""

from __future__ import annotations

import copy
import posixpath
import uuid
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import IO, Any, ClassVar, TypeVar

from runhouse.errors import InvalidNameError
from runhouse.resources.data import DataSystem, data_system, transfer
from runhouse.resources.data.registry import documented_location
from runhouse.resources.resource import Resource

D = TypeVar("D", bound="DataResource")


class DataResource(Resource):
    """Data at ``path`` on a :class:`~runhouse.resources.data.base.DataSystem`; the base of folders,
    blobs and tables. Without a path it lives at a default location under the system's runhouse data folder
    (``~/.cache/runhouse/<kind>s/<name>``; ``BUCKET/runhouse/...`` in a bucket)."""

    DEFAULT_FOLDER: ClassVar[str] = "data"
    SINGLE_FILE: ClassVar[bool] = False  # a blob is one file; folders and tables are trees

    def __init__(
        self,
        path: str | None = None,
        system: Any = None,
        name: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name)
        self.system: DataSystem = data_system(system, storage_options)
        self.path: str = (
            self.system.normalize(path)
            if path
            else self.system.default_path(self.DEFAULT_FOLDER, self.name or uuid.uuid4().hex)
        )

    def is_local(self) -> bool:
        """Whether the data is on this machine's disk."""
        return self.system.is_local

    def exists_in_system(self) -> bool:
        """Whether anything is at :attr:`path` on :attr:`system`."""
        return self.system.exists(self.path)

    def to(
        self: D,
        system: Any,
        path: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> D:
        """A copy of this data at ``path`` on ``system`` (see :func:`~runhouse.resources.data.registry.data_system`).

        The copy is swapped in only once complete. Without ``path``: the default location there. ``progress``
        shows a bar (default: for 64 MiB or more).
        """
        destination = data_system(system, storage_options)
        target = destination.normalize(path) if path else self._default_destination(destination)
        moved = self._at(destination, target)
        if self.system.same_storage(destination) and target == self.path:
            return moved
        if self._write_pending():
            return moved.write()  # type: ignore[attr-defined, no-any-return]
        transfer(self.system, self.path, destination, target, single_file=self.SINGLE_FILE, progress=progress)
        return moved

    def _default_destination(self, destination: DataSystem) -> str:
        return destination.default_path(self.DEFAULT_FOLDER, self.name or posixpath.basename(self.path))

    def _at(self: D, system: DataSystem, path: str) -> D:
        """This resource (same name and fields) at another place."""
        moved = copy.copy(self)
        moved.system, moved.path = system, path
        return moved

    def _write_pending(self) -> bool:
        """Whether the data is only in memory so far (``.to`` then writes it at the destination)."""
        return False

    def config(self) -> dict[str, Any]:
        return {**super().config(), "path": self.path, **self.system.config_fields()}

    @staticmethod
    def _location(config: dict[str, Any]) -> dict[str, Any]:
        """The constructor arguments every data resource's config holds."""
        return {"path": config["path"], "system": config["system"], "name": config.get("name"),
                "storage_options": config.get("storage_options")}

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> DataResource:
        return cls(**cls._location(config))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.rns_address or self.name!r} at {self.path!r} on {self.system!r}>"


class Folder(DataResource):
    """A folder of files on a data system.

    Names given to :meth:`get`, :meth:`put`, :meth:`open` and :meth:`rm` are relative to the folder and may
    not leave it (no ``..``, not absolute): :class:`~runhouse.errors.InvalidNameError` otherwise.
    """

    RESOURCE_TYPE = "folder"
    DEFAULT_FOLDER = "folders"

    def _child(self, name: str) -> str:
        parts = PurePosixPath(name).parts
        if not name or name.startswith(("/", "~")) or "\\" in name or ".." in parts or "\0" in name:
            raise InvalidNameError(
                f"{name!r} is not a name inside the folder {self.path!r}: use a relative path without '..'"
            )
        return posixpath.join(self.path, posixpath.normpath(name))

    def ls(self, full_paths: bool = False) -> list[str]:
        """Names of the files and folders directly in this folder, sorted (full paths on request)."""
        names = self.system.ls(self.path)
        return [posixpath.join(self.path, n) for n in names] if full_paths else names

    def files(self) -> dict[str, int]:
        """Every file in the folder, recursively: ``{relative name: size in bytes}``."""
        return self.system.walk(self.path)

    def open(self, name: str, mode: str = "rb") -> IO[Any]:
        """Open the file ``name`` in the folder for streaming (``r``/``w``/``a``, each optionally ``b``)."""
        return self.system.open(self._child(name), mode)

    def get(self, name: str) -> bytes:
        """The content of the file ``name``."""
        return self.system.read(self._child(name))

    def put(self, contents: Mapping[str, bytes | str]) -> Folder:
        """Write ``{name: bytes or str}`` as files of the folder (str as UTF-8); subfolders are created."""
        paths = {self._child(name): data for name, data in contents.items()}  # check every name first
        for path, data in paths.items():
            self.system.write(path, data.encode() if isinstance(data, str) else data)
        return self

    def mkdir(self) -> Folder:
        """Create the folder (and its parents) on its system."""
        self.system.mkdir(self.path)
        return self

    def rm(self, contents: list[str] | None = None) -> None:
        """Remove the named files or subfolders, or without ``contents`` the whole folder."""
        if contents is None:
            self.system.rm(self.path)
            return
        for path in [self._child(name) for name in contents]:
            self.system.rm(path)

    def mv(self, path: str, system: Any = None, storage_options: Mapping[str, Any] | None = None) -> Folder:
        """Move the folder to ``path`` (on ``system``, by default its own), replacing what is there."""
        destination = self.system if system is None else data_system(system, storage_options)
        target = destination.normalize(path)
        if destination.same_storage(self.system):
            self.system.replace(self.path, target)
        else:
            transfer(self.system, self.path, destination, target)
            self.system.rm(self.path)
        self.system, self.path = destination, target
        return self

    def _default_destination(self, destination: DataSystem) -> str:
        # On disks a folder keeps its own name: in the home folder of a cluster, the working folder here.
        if destination.kind in ("file", "cluster"):
            return destination.normalize(posixpath.basename(self.path))
        return super()._default_destination(destination)


def folder(
    name: str | None = None,
    path: str | None = None,
    system: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    dryrun: bool = False,
    url: str | None = None,
    fs: Any = None,
) -> Folder:
    """A folder at ``path`` on ``system`` ("file" by default, a cluster, "s3", "gs").

    ``url`` and ``fs`` are Runhouse's documented names for ``path`` and ``system``. Called with only a name,
    loads the folder saved under it.

    Example::

        data = rh.folder(path="data").to(gpu)                 # laptop -> the cluster's ~/data
        data.put({"a.txt": "hello"}); data.ls()
        data.to("here", path="local_data")                    # back to this machine
        rh.folder(path="bucket/data", system="s3").to(gpu)
    """
    path, system = documented_location(path, url, system, fs)
    if name is not None and path is None and system is None:
        from runhouse.resources.resource import load_typed

        return load_typed(Folder, name, dryrun=dryrun)
    return Folder(path=path, system=system, name=name, storage_options=storage_options)
