"""Where data resources (folders, blobs, tables) keep their files: one abstract :class:`DataSystem`, one
implementation per kind, and :func:`transfer`, the one way files move between any two of them.

::

    DataSystem                 the contract (each method documents its own)
    ├── _PosixSystem           files on a POSIX disk, worked on by runhouse.resources._data_ops
    │   ├── FileSystem         "file": this machine
    │   ├── DaemonSystem       a cluster reached by its daemon (the operations run as calls in a worker;
    │   │                      a daemon on this machine shares its disk, so files are used directly)
    │   └── SSHSystem          a cluster reached over SSH (operations as a script over the connection,
    │                          bulk moves by rsync)
    └── ObjectStoreSystem      "s3" / "gs" through fsspec (s3fs / gcsfs, optional extras), in
                               runhouse.resources._object_store (imported when a bucket is named)

Paths are strings. On this machine they are made absolute; on a cluster they are relative to its home
folder unless absolute; in a bucket they are ``bucket/key`` (an ``s3://`` prefix is dropped).

Transfers never leave a destination that looks complete when they are interrupted: files are copied into a
hidden sibling (``.NAME.rh-partial``), which is then swapped in with renames (on object stores, moved by
server-side copies). The sibling's name is fixed, so an interrupted rsync resumes where it stopped.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import functools
import hashlib
import io
import json
import os
import posixpath
import shlex
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

from runhouse.errors import ConfigError, DataNotFoundError, RunhouseError
from runhouse.resources import _data_ops

if TYPE_CHECKING:
    from runhouse.resources.cluster import Cluster
    from runhouse.resources.function import Function
    from runhouse.resources.ssh_cluster import SSHCluster
    from runhouse.transport.ssh import SSHCredentials

MIB = 1024 * 1024
DATA_ROOT = "~/.cache/runhouse"  # on this machine and on clusters; in a bucket: "BUCKET/runhouse"
CHUNK_BYTES = 64 * MIB  # the most one call or one batch carries
# A file larger than CHUNK_BYTES moves in calls of FILE_CHUNK_BYTES, CHUNKS_IN_FLIGHT at once. Under glibc's
# 32 MiB mmap threshold, the buffers of a chunk reuse freed memory instead of faulting in new pages (which
# halves the throughput of a through-the-daemon transfer, measured with bench/data.py).
FILE_CHUNK_BYTES = 16 * MIB
CHUNKS_IN_FLIGHT = 2
PROGRESS_MIN_BYTES = 64 * MIB  # transfers this large show a progress bar unless told otherwise
OPERATION_TIMEOUT_S = 600.0  # one data operation (call, ssh command) on a cluster
TRANSFER_TIMEOUT_S = 6 * 3600.0  # one rsync run
_PROGRESS_POLL_S = 0.5
_STAGE_SUFFIX = ".rh-partial"
_OPS_NAME = "rh_data_ops"
_OPS_SCRIPT_DIR = ".cache/runhouse/ops"


Advance = Callable[[int], None]


def _no_progress(_: int) -> None:
    """Progress callback that shows nothing."""


class DataSystem(abc.ABC):
    """A place that holds files: every data resource reads and writes through one.

    Implementations fill in the primitives below; :func:`transfer` moves files between any two of them.
    All paths are strings in the system's own terms (see the module docstring).
    """

    kind: str
    resumes: ClassVar[bool] = False  # whether a transfer interrupted mid-way continues where it stopped

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
    where = system.describe()
    label = where if isinstance(where, str) else where.get("name") or "cluster"
    detail = f" ({exc})" if exc and str(exc) and path not in str(exc) else ""
    return DataNotFoundError(f"nothing at {path!r} on {label!r}{detail}", system=str(label), path=path)


# --- POSIX disks -------------------------------------------------------------------------------------------
class _PosixSystem(DataSystem):
    """Files on a POSIX disk, worked on by :mod:`runhouse.resources._data_ops` wherever the disk is.

    Subclasses say how an operation reaches the disk (:meth:`_op`); on this machine it is a plain call.
    """

    def _op(self, name: str, *args: Any) -> Any:
        """Run ``_data_ops.<name>(*args)`` where the files are."""
        return _data_ops.run(name, *args)

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
            _data_ops.copy(root, list(files), local_root)
            return
        for batch in batches_by_size(files):
            name = batch[0]
            if len(batch) == 1 and files[name] > CHUNK_BYTES:
                self._download_large(posixpath.join(root, name), files[name], os.path.join(local_root, name), advance)
                continue
            for name, data in zip(batch, self._checked(root, "read_many", root, batch), strict=True):
                _data_ops.write(os.path.join(local_root, name), data)
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
            _data_ops.copy(local_root, list(files), root)
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
            full = _data_ops.resolve(path)
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


class FileSystem(_PosixSystem):
    """This machine's disk (``system="file"``)."""

    kind = "file"

    @property
    def is_local(self) -> bool:
        return True

    def describe(self) -> str:
        return "file"

    def normalize(self, path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))


class DaemonSystem(_PosixSystem):
    """A cluster's disk, reached through its daemon: each operation is a call of ``_data_ops.run`` deployed
    to the cluster (large buffers travel out-of-band). A daemon on this machine shares this disk, so its
    files are used directly unless ``shared_disk=False``.
    """

    kind = "cluster"

    def __init__(self, cluster: Cluster, shared_disk: bool | None = None) -> None:
        self.cluster = cluster
        self.shared_disk = cluster.is_local if shared_disk is None else shared_disk

    @property
    def is_local(self) -> bool:
        return self.shared_disk

    def describe(self) -> str | dict[str, Any]:
        return self.cluster.rns_address or self.cluster.config()

    def same_storage(self, other: DataSystem) -> bool:
        if isinstance(other, DaemonSystem) and other.cluster._endpoint() == self.cluster._endpoint():
            return True
        return super().same_storage(other)

    def _op(self, name: str, *args: Any) -> Any:
        if self.shared_disk:
            return _data_ops.run(name, *args)
        return _ops_stub(self.cluster)(name, *args, stream_logs=False, timeout=OPERATION_TIMEOUT_S)


_OPS_STUBS: weakref.WeakKeyDictionary[Cluster, Function] = weakref.WeakKeyDictionary()


def _ops_stub(cluster: Cluster) -> Function:
    """``_data_ops.run`` deployed to ``cluster`` (once per cluster object; re-deploying costs one round trip)."""
    if cluster not in _OPS_STUBS:
        from runhouse.resources.function import Function

        _OPS_STUBS[cluster] = Function(_data_ops.run, _OPS_NAME).to(cluster)
    return _OPS_STUBS[cluster]


_SCRIPTS: dict[SSHCredentials, str] = {}  # host -> where its copy of _data_ops.py is


class SSHSystem(_PosixSystem):
    """A cluster's disk reached over its SSH connection: operations run ``_data_ops.py`` as a script on the
    host (copied there once), and files move with rsync (only what changed; resumable)."""

    kind = "cluster"
    resumes = True

    def __init__(self, cluster: SSHCluster) -> None:
        self.cluster = cluster

    def describe(self) -> str | dict[str, Any]:
        return self.cluster.rns_address or self.cluster.config()

    def same_storage(self, other: DataSystem) -> bool:
        return isinstance(other, SSHSystem) and other.cluster.creds == self.cluster.creds

    def _script_path(self) -> str:
        """The path (relative to the remote home) of ``_data_ops.py`` on the host, copied there on first use."""
        host = self.cluster.creds
        if host not in _SCRIPTS:
            source = Path(_data_ops.__file__).read_bytes()
            digest = hashlib.sha256(source).hexdigest()[:16]
            script = f"{_OPS_SCRIPT_DIR}/data_ops-{digest}.py"
            command = (
                f"test -f {script} || {{ mkdir -p {_OPS_SCRIPT_DIR} && cat > {script}.$$ && mv {script}.$$ {script}; }}"
            )
            self.cluster.ssh_connection.run(command, input=source, timeout=OPERATION_TIMEOUT_S, check=True)
            _SCRIPTS[host] = script
        return _SCRIPTS[host]

    def _op(self, name: str, *args: Any) -> Any:
        # -I -S: no site-packages or user environment to import, which halves the interpreter's start.
        command = f"python3 -I -S {self._script_path()} {name} {shlex.quote(json.dumps(list(args)))}"
        result = self.cluster.ssh_connection.run(command, timeout=OPERATION_TIMEOUT_S)
        try:
            answer = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise RunhouseError(
                f"the data operation {name!r} failed on {self.cluster.host} (exit code {result.returncode}); "
                f"is python3 installed there?\n{result.stderr[-2000:]}"
            ) from None
        if "error" in answer:
            error_type = _REMOTE_ERRORS.get(answer["error"], OSError)
            raise error_type(answer["message"])
        return _decode(answer["ok"])

    # File contents travel by rsync through a temporary file here: binary-safe, fast, and atomic on writes.
    def read(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        with tempfile.TemporaryDirectory(prefix="rh-read-") as here:
            local = os.path.join(here, "file")
            transfer(self, path, FileSystem(), local, single_file=True, progress=False)
            with open(local, "rb") as f:
                f.seek(offset)
                return f.read(length)

    def write(self, path: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="rh-write-") as here:
            local = os.path.join(here, "file")
            Path(local).write_bytes(data)
            transfer(FileSystem(), local, self, path, single_file=True, progress=False)

    def download(self, root: str, files: Mapping[str, int], local_root: str, advance: Advance) -> None:
        os.makedirs(local_root, exist_ok=True)
        measure = functools.partial(_local_tree_size, local_root)
        with _polled(measure, advance):
            self.cluster.ssh_connection.rsync(
                f"{_rsync_path(root)}/",
                f"{local_root}/",
                files_from=list(files),
                upload=False,
                timeout=TRANSFER_TIMEOUT_S,
            )

    def upload(self, local_root: str, files: Mapping[str, int], root: str, advance: Advance) -> None:
        # rsync makes only the last folder of its destination; the shell makes the rest without starting python.
        command = f"mkdir -p {shlex.quote(_rsync_path(root))}"
        self.cluster.ssh_connection.run(command, timeout=OPERATION_TIMEOUT_S, check=True)
        measure = functools.partial(self._tree_size, root)
        with _polled(measure, advance):
            self.cluster.ssh_connection.rsync(
                f"{local_root}/", f"{_rsync_path(root)}/", files_from=list(files), timeout=TRANSFER_TIMEOUT_S
            )

    def _tree_size(self, root: str) -> int:
        return sum(self.walk(root).values()) if self.exists(root) else 0


_REMOTE_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError, KeyError)
}


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def _rsync_path(path: str) -> str:
    """A remote path as rsync takes it: relative paths (and ``~/...``) are relative to the home folder."""
    if path in ("", "~", "~/"):
        return "."
    return path[2:] if path.startswith("~/") else path


def _local_tree_size(root: str) -> int:
    total = 0
    for parent, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # rsync renames its temporary files as it goes
                total += os.path.getsize(os.path.join(parent, name))
    return total


@contextlib.contextmanager
def _polled(measure: Callable[[], int], advance: Advance) -> Iterator[None]:
    """Report progress of a transfer that cannot report it itself by measuring its destination."""
    if advance is _no_progress:
        yield
        return
    reported = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal reported
        while not done.wait(_PROGRESS_POLL_S):
            with contextlib.suppress(OSError, RunhouseError):
                now = measure()
                if now > reported:
                    advance(now - reported)
                    reported = now

    thread = threading.Thread(target=poll, daemon=True, name="rh-transfer-progress")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    total = measure()
    if total > reported:
        advance(total - reported)


class _UploadOnClose(io.FileIO):
    """A local file whose content is sent to its system when it is closed (see :meth:`_PosixSystem.open`)."""

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


# --- resolving system= and moving files ---------------------------------------------------------------------
def data_system(system: Any = None, storage_options: Mapping[str, Any] | None = None) -> DataSystem:
    """The data system ``system`` names.

    ``None``, ``"file"`` or ``"here"``: this machine; ``"s3"``/``"gs"`` (or ``"s3://BUCKET"``, which also
    sets the bucket of default locations): an object store with ``storage_options`` (``endpoint_url``, ...);
    a :class:`~runhouse.resources.cluster.Cluster`, a saved cluster's name or a cluster config: that
    cluster's disk (over SSH for clusters reached by SSH, else through its daemon); a :class:`DataSystem`:
    itself.

    Example::

        data_system("s3://my-bucket", {"endpoint_url": "http://127.0.0.1:9000"})
    """
    from runhouse.resources.cluster import Cluster
    from runhouse.resources.ssh_cluster import SSHCluster

    if isinstance(system, DataSystem):
        return system
    if system is None or system in ("file", "here", "local"):
        return FileSystem()
    if isinstance(system, str):
        from runhouse.resources._object_store import FSSPEC_PACKAGES, ObjectStoreSystem

        kind, _, bucket = system.partition("://")
        if kind in FSSPEC_PACKAGES:
            return ObjectStoreSystem(kind, storage_options, bucket=bucket or None)
        from runhouse.resources.resource import load_typed

        system = load_typed(Cluster, system)
    elif isinstance(system, dict):
        system = Cluster.from_config(system)
    if isinstance(system, SSHCluster):
        return SSHSystem(system)
    if isinstance(system, Cluster):
        return DaemonSystem(system)
    raise ConfigError(f"system={system!r}: use 'file', 's3', 'gs', a cluster or a cluster's name")


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
            source.download(root, files, _data_ops.resolve(stage), advance)
        elif source.is_local:
            destination.upload(_data_ops.resolve(root), files, stage, advance)
        else:
            with tempfile.TemporaryDirectory(prefix="rh-transfer-") as here:
                source.download(root, files, here, advance)
                destination.upload(here, files, stage, advance)
        if not files:
            destination.mkdir(stage)
    destination.swap(stage, destination_path, name if single_file else None)


@contextlib.contextmanager
def _progress_bar(total: int, description: str, show: bool) -> Iterator[Advance]:
    if not show:
        yield _no_progress
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        lock = threading.Lock()

        def advance(nbytes: int) -> None:
            with lock:
                bar.update(task, advance=nbytes)

        yield advance
