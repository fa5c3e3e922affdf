"""POSIX disks: :class:`PosixSystem`, the shared base that works on files through the ops script
(:mod:`runhouse.resources.data._ops`) wherever the disk is, and :class:`FileSystem`, this machine's disk
(``system="file"``).

Disks elsewhere subclass :class:`PosixSystem` and say only how an operation reaches the disk
(:meth:`PosixSystem._op`): :mod:`~runhouse.resources.data.daemon` (calls to the cluster's daemon) and
:mod:`~runhouse.resources.data.ssh` (the script over SSH, rsync for bulk moves).
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from runhouse.errors import ConfigError
from runhouse.resources.data import _ops
from runhouse.resources.data.base import (
    CHUNK_BYTES,
    MIB,
    Advance,
    DataSystem,
    batches_by_size,
    not_found_error,
    transfer,
)

# A file larger than CHUNK_BYTES moves in calls of FILE_CHUNK_BYTES, CHUNKS_IN_FLIGHT at once. Under glibc's
# 32 MiB mmap threshold, the buffers of a chunk reuse freed memory instead of faulting in new pages (which
# halves the throughput of a through-the-daemon transfer, measured with bench/data.py).
FILE_CHUNK_BYTES = 16 * MIB
CHUNKS_IN_FLIGHT = 2
OPERATION_TIMEOUT_S = 600.0  # one data operation (call, ssh command) on a cluster


class PosixSystem(DataSystem):
    """Files on a POSIX disk, worked on by :mod:`runhouse.resources.data._ops` wherever the disk is.

    Subclasses say how an operation reaches the disk (:meth:`_op`); on this machine it is a plain call.
    When :attr:`is_local`, bulk copies and :meth:`open` use the files directly.
    """

    def _op(self, name: str, *args: Any) -> Any:
        """Run ``_ops.<name>(*args)`` where the files are; missing paths raise :class:`FileNotFoundError`."""
        return _ops.run(name, *args)

    def _checked(self, path: str, name: str, *args: Any) -> Any:
        try:
            return self._op(name, *args)
        except FileNotFoundError as exc:
            raise not_found_error(self, path, exc) from None

    def exists(self, path: str) -> bool:
        return bool(self._op("exists", path))

    def walk(self, path: str) -> dict[str, int]:
        return dict(self._checked(path, "walk", path))

    def ls(self, path: str) -> list[str]:
        return list(self._checked(path, "ls", path))

    def size(self, path: str) -> int:
        return int(self._checked(path, "size", path))

    def read(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        return bytes(self._checked(path, "read", path, offset, length))

    def write(self, path: str, data: bytes) -> None:
        self._op("write", path, bytes(data), 0)

    def write_at(self, path: str, data: bytes, offset: int) -> None:
        """Write ``data`` at ``offset`` of the file at ``path`` (offset 0 truncates it first)."""
        self._op("write", path, bytes(data), offset)

    def mkdir(self, path: str) -> None:
        self._op("mkdir", path)

    def rm(self, path: str) -> bool:
        return bool(self._op("rm", path))

    def replace(self, source: str, destination: str) -> None:
        self._checked(source, "replace", source, destination)

    def swap(self, stage: str, destination: str, name: str | None = None) -> None:
        self._checked(stage, "swap", stage, destination, name)  # one operation where the files are

    def copy(self, root: str, names: list[str], destination: str) -> None:
        self._checked(root, "copy", root, names, destination)

    def download(self, root: str, files: Mapping[str, int], local_root: str, advance: Advance) -> None:
        if self.is_local:
            _ops.copy(root, list(files), local_root)
            return
        for batch in batches_by_size(files):
            name = batch[0]
            if len(batch) == 1 and files[name] > CHUNK_BYTES:
                self._download_large(posixpath.join(root, name), files[name], os.path.join(local_root, name), advance)
                continue
            for name, data in zip(batch, self._checked(root, "read_many", root, batch), strict=True):
                _ops.write(os.path.join(local_root, name), data)
                advance(len(data))

    def _download_large(self, path: str, size: int, local_path: str, advance: Advance) -> None:
        os.makedirs(os.path.dirname(local_path), exist_ok=True)
        with open(local_path, "wb") as f:

            def move(offset: int) -> int:
                chunk = self.read(path, offset, FILE_CHUNK_BYTES)
                os.pwrite(f.fileno(), chunk, offset)
                return len(chunk)

            _in_chunks(move, range(0, size, FILE_CHUNK_BYTES), advance)

    def upload(self, local_root: str, files: Mapping[str, int], root: str, advance: Advance) -> None:
        if self.is_local:
            _ops.copy(local_root, list(files), root)
            return
        for batch in batches_by_size(files):
            name = batch[0]
            if len(batch) == 1 and files[name] > CHUNK_BYTES:
                self._upload_large(os.path.join(local_root, name), files[name], posixpath.join(root, name), advance)
                continue
            contents = {name: Path(local_root, name).read_bytes() for name in batch}
            self._op("write_many", root, contents)
            advance(sum(len(data) for data in contents.values()))

    def _upload_large(self, local_path: str, size: int, path: str, advance: Advance) -> None:
        with open(local_path, "rb") as f:

            def move(offset: int) -> int:
                chunk = os.pread(f.fileno(), FILE_CHUNK_BYTES, offset)
                self.write_at(path, chunk, offset)
                return len(chunk)

            advance(move(0))  # the first chunk creates (or truncates) the file; the others write into it
            _in_chunks(move, range(FILE_CHUNK_BYTES, size, FILE_CHUNK_BYTES), advance)

    def open(self, path: str, mode: str = "rb") -> IO[Any]:
        """On this machine, the file itself; elsewhere a local copy, sent back (atomically) when closed."""
        kind = _mode_kind(mode)
        if self.is_local:
            full = _ops.resolve(path)
            if kind != "r":
                os.makedirs(os.path.dirname(full), exist_ok=True)
            elif not os.path.isfile(full):
                raise not_found_error(self, path)
            return open(full, mode)  # noqa: SIM115 - the caller closes it
        here = tempfile.mkdtemp(prefix="rh-open-")
        local = os.path.join(here, "file")
        try:
            if kind == "r" or (kind == "a" and self.exists(path)):
                transfer(self, path, FileSystem(), local, single_file=True, progress=False)
        except BaseException:
            shutil.rmtree(here)
            raise
        if kind == "r":
            opened = open(local, mode)  # noqa: SIM115 - the caller closes it
            shutil.rmtree(here)  # the open file stays readable
            return opened

        def upload() -> None:
            try:
                transfer(FileSystem(), local, self, path, single_file=True, progress=False)
            finally:
                shutil.rmtree(here)

        raw = _UploadOnClose(local, kind, upload)
        buffered = io.BufferedWriter(raw)
        return buffered if "b" in mode else io.TextIOWrapper(buffered, encoding="utf-8")


class FileSystem(PosixSystem):
    """This machine's disk (``system="file"``, also ``"here"``, ``"local"`` or no system at all)."""

    kind = "file"

    @classmethod
    def from_name(
        cls, name: str, location: str | None = None, storage_options: Mapping[str, Any] | None = None
    ) -> FileSystem:
        """This machine's disk; ``storage_options`` are ignored, and it takes no location."""
        if location:
            raise ConfigError(f"system='{name}://{location}': this machine takes no location; pass it as path=")
        return cls()

    @property
    def is_local(self) -> bool:
        return True

    def describe(self) -> str:
        return "file"

    def normalize(self, path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))


class _UploadOnClose(io.FileIO):
    """A local file whose content is sent to its system when it is closed (see :meth:`PosixSystem.open`)."""

    def __init__(self, path: str, mode: str, on_close: Callable[[], None]) -> None:
        super().__init__(path, mode)
        self._on_close: Callable[[], None] | None = on_close

    def close(self) -> None:
        super().close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


def _mode_kind(mode: str) -> str:
    kind = mode.replace("b", "").replace("t", "")
    if kind not in ("r", "w", "a"):
        raise ValueError(f"mode {mode!r}: use r, w or a (each optionally with b)")
    return kind


def _in_chunks(move: Callable[[int], int], offsets: Iterable[int], advance: Advance) -> None:
    """Run ``move(offset)`` (which returns the bytes it moved) for every offset, :data:`CHUNKS_IN_FLIGHT` at
    a time, so that one side's reading and copying overlaps the other's."""
    with ThreadPoolExecutor(CHUNKS_IN_FLIGHT, thread_name_prefix="rh-chunk") as pool:
        for moved in pool.map(move, offsets):
            advance(moved)
