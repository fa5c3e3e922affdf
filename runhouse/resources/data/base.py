"""The data system contract: :class:`DataSystem`, the helpers every backend shares, and :func:`transfer`, the
one way files move between any two systems. Nothing here knows a backend.

Paths are strings in each system's own terms. On this machine they are made absolute; on a cluster they are
relative to its home folder unless absolute; in a bucket they are ``bucket/key`` (an ``s3://`` prefix is
dropped).

Transfers never leave a destination that looks complete when they are interrupted: files are copied into a
hidden sibling (``.NAME.rh-partial``), which is then swapped in with renames (on object stores, moved by
server-side copies). The sibling's name is fixed, so an interrupted rsync resumes where it stopped.
"""

from __future__ import annotations

import abc
import contextlib
import posixpath
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, ClassVar

from runhouse import progress
from runhouse.errors import ConfigError, DataNotFoundError
from runhouse.resources.data import _ops

MIB = 1024 * 1024
DATA_ROOT = "~/.cache/runhouse"  # on this machine and on clusters; in a bucket: "BUCKET/runhouse"
CHUNK_BYTES = 64 * MIB  # the most one call or one batch carries
PROGRESS_MIN_BYTES = 64 * MIB  # transfers this large show a progress bar unless told otherwise
_STAGE_SUFFIX = ".rh-partial"


Advance = Callable[[int], None]


def no_progress(_: int) -> None:
    """Progress callback that shows nothing (backends may test for it to skip measuring progress)."""


class DataSystem(abc.ABC):
    """A place that holds files: every data resource reads and writes through one.

    Implementations fill in the abstract primitives below; :func:`transfer` moves files between any two of
    them. All paths are strings in the system's own terms (see the module docstring).
    """

    kind: str
    resumes: ClassVar[bool] = False  # whether a transfer interrupted mid-way continues where it stopped

    @classmethod
    def from_name(
        cls, name: str, location: str | None = None, storage_options: Mapping[str, Any] | None = None
    ) -> DataSystem:
        """The system ``system=name`` (or ``system="name://location"``) means, for a class registered as ``name``.

        Only systems reached by name (see :mod:`runhouse.resources.data.registry`) implement this; others
        (a cluster's disk) are given by their cluster.

        Raises:
            ConfigError: this class is not reached by name, or takes no ``location``.
        """
        raise ConfigError(f"{cls.__name__} is not reached by name: pass the data system (or its cluster) itself")

    @property
    def is_local(self) -> bool:
        """Whether the system's paths are files of this machine (so they can be copied here directly)."""
        return False

    @abc.abstractmethod
    def describe(self) -> str | dict[str, Any]:
        """The JSON-able value of ``system`` in a resource's config: a kind, or the cluster's name or config."""

    def normalize(self, path: str) -> str:
        """``path`` in the form the system keeps it (absolute here; unchanged on clusters)."""
        return path

    def data_root(self) -> str:
        """The folder default locations go under (``~/.cache/runhouse`` on disks)."""
        return DATA_ROOT

    def same_storage(self, other: DataSystem) -> bool:
        """Whether ``other`` reaches the same files under the same paths, so copies stay inside the system."""
        return self.is_local and other.is_local

    def config_fields(self) -> dict[str, Any]:
        """The fields naming this system in a resource's config: ``system`` (object stores add options)."""
        return {"system": self.describe()}

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a file or folder is at ``path``."""

    @abc.abstractmethod
    def walk(self, path: str) -> dict[str, int]:
        """Every file under the folder ``path``, recursively, as ``{relative posix name: size}``.

        Raises:
            DataNotFoundError: there is no folder at ``path``.
        """

    @abc.abstractmethod
    def ls(self, path: str) -> list[str]:
        """Names of the entries directly in the folder ``path``, sorted (raises :class:`DataNotFoundError`)."""

    @abc.abstractmethod
    def size(self, path: str) -> int:
        """Size in bytes of the file at ``path`` (raises :class:`DataNotFoundError`)."""

    @abc.abstractmethod
    def read(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        """``length`` bytes (all when negative) of the file at ``path`` from ``offset``."""

    @abc.abstractmethod
    def write(self, path: str, data: bytes) -> None:
        """Make ``data`` the whole content of the file at ``path``; missing parent folders are created."""

    @abc.abstractmethod
    def mkdir(self, path: str) -> None:
        """Create the folder ``path`` with its parents; nothing happens when it exists."""

    @abc.abstractmethod
    def rm(self, path: str) -> bool:
        """Remove the file or the folder (with everything in it) at ``path``; returns whether there was one."""

    @abc.abstractmethod
    def replace(self, source: str, destination: str) -> None:
        """Move ``source`` to ``destination``, replacing what is there, never leaving a mix of the two."""

    def swap(self, stage: str, destination: str, name: str | None = None) -> None:
        """Put a finished transfer in place: the folder ``stage``, or with ``name`` its one file (the stage is
        then removed), replaces ``destination`` (see :meth:`replace`)."""
        if name is None:
            self.replace(stage, destination)
            return
        self.replace(posixpath.join(stage, name), destination)
        self.rm(stage)

    @abc.abstractmethod
    def copy(self, root: str, names: list[str], destination: str) -> None:
        """Copy files ``root/name`` to ``destination/name`` inside this system (see :meth:`same_storage`)."""

    @abc.abstractmethod
    def download(self, root: str, files: Mapping[str, int], local_root: str, advance: Advance) -> None:
        """Copy files ``root/name`` of this system (``files`` maps names to sizes) to ``local_root/name`` here.

        ``advance(nbytes)`` is called as bytes arrive (progress only; it may be called late or in bulk).
        """

    @abc.abstractmethod
    def upload(self, local_root: str, files: Mapping[str, int], root: str, advance: Advance) -> None:
        """Copy files ``local_root/name`` on this machine (``files`` maps names to sizes) to ``root/name``."""

    @abc.abstractmethod
    def open(self, path: str, mode: str = "rb") -> IO[Any]:
        """A file object streaming the file at ``path`` (modes ``r``, ``w``, ``a``, each also with ``b``)."""

    # --- helpers built on the primitives ----------------------------------------------------------------
    def default_path(self, folder: str, name: str) -> str:
        """The default location of a resource of ``folder`` ("blobs", "tables", ...) named ``name``."""
        return self.normalize(posixpath.join(self.data_root(), folder, name))

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write the file at ``path`` so that readers see the old content or all of the new, never a part."""
        stage = stage_path(path)
        self.write(stage, data)
        self.replace(stage, path)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()!r}>"


def stage_path(path: str) -> str:
    """The hidden sibling a transfer to ``path`` fills before it is swapped in."""
    parent, name = posixpath.split(path.rstrip("/"))
    return posixpath.join(parent, f".{name}{_STAGE_SUFFIX}")


def not_found_error(system: DataSystem, path: str, exc: BaseException | None = None) -> DataNotFoundError:
    """The error for nothing at ``path`` on ``system``, naming the system (and ``exc``'s detail, if new)."""
    where = system.describe()
    label = where if isinstance(where, str) else where.get("name") or "cluster"
    detail = f" ({exc})" if exc and str(exc) and path not in str(exc) else ""
    return DataNotFoundError(f"nothing at {path!r} on {label!r}{detail}", system=str(label), path=path)


def batches_by_size(sizes: Mapping[str, int]) -> Iterator[list[str]]:
    """The names of ``sizes`` in groups of about :data:`CHUNK_BYTES`; a larger file is a group of its own."""
    batch: list[str] = []
    batch_bytes = 0
    for name in sizes:
        if batch and batch_bytes + sizes[name] > CHUNK_BYTES:
            yield batch
            batch, batch_bytes = [], 0
        batch.append(name)
        batch_bytes += sizes[name]
    if batch:
        yield batch


def transfer(
    source: DataSystem,
    source_path: str,
    destination: DataSystem,
    destination_path: str,
    *,
    single_file: bool = False,
    progress: bool | None = None,
) -> None:
    """Copy the folder (or, with ``single_file``, the file) at ``source_path`` to ``destination_path``.

    The copy fills a hidden sibling of the destination and is swapped in only when complete. Between two
    systems that are not this machine, the files pass through a temporary folder here.

    Args:
        progress: show a progress bar (rich); by default only for transfers of 64 MiB or more.
    """
    if single_file:
        root, name = posixpath.split(source_path)
        files = {name: source.size(source_path)}
    else:
        root, files = source_path, dict(sorted(source.walk(source_path).items()))
    stage = stage_path(destination_path)
    same = source.same_storage(destination)
    if same or not (destination.resumes or source.resumes):
        destination.rm(stage)  # what an earlier, interrupted transfer left (rsync resumes from it instead)
    total = sum(files.values())
    crossings = 1 if same or source.is_local or destination.is_local else 2
    show = total >= PROGRESS_MIN_BYTES if progress is None else progress
    with _progress_bar(total * crossings, f"{source_path} -> {destination_path}", show) as advance:
        if same:
            destination.copy(root, list(files), stage)
        elif destination.is_local:
            source.download(root, files, _ops.resolve(stage), advance)
        elif source.is_local:
            destination.upload(_ops.resolve(root), files, stage, advance)
        else:
            with tempfile.TemporaryDirectory(prefix="rh-transfer-") as here:
                source.download(root, files, here, advance)
                destination.upload(here, files, stage, advance)
        if not files:
            destination.mkdir(stage)
    destination.swap(stage, destination_path, name if single_file else None)


@contextlib.contextmanager
def _progress_bar(total: int, description: str, show: bool) -> Iterator[Advance]:
    """A bar with bytes, rate and time left on the progress console; none when not ``show``, in quiet mode,
    or inside another live display (a bring-up step)."""
    if not show or progress.quiet():
        yield no_progress
        return
    from rich.errors import LiveError
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    bar = Progress(*columns, TimeRemainingColumn(), console=progress.console, transient=True)
    try:
        bar.start()
    except LiveError:
        yield no_progress
        return
    began = time.perf_counter()
    try:
        task = bar.add_task(description, total=total)
        lock = threading.Lock()

        def advance(nbytes: int) -> None:
            with lock:
                bar.update(task, advance=nbytes)

        yield advance
    finally:
        bar.stop()
    took, megabytes = max(time.perf_counter() - began, 1e-6), total / 1e6
    progress.say(f"[green]✓[/green] {description}: {megabytes:,.1f} MB in {took:.1f} s ({megabytes / took:,.0f} MB/s)")
