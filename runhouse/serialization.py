"""How values cross process and machine boundaries.

Values travel as pickle protocol 5 with out-of-band buffers, so numpy arrays and Arrow buffers are never
copied into the pickle stream: they ride beside it and are rebuilt zero-copy from the receiving buffer
(writable when the receiver reads into a ``bytearray``). Pickle writes ``bytes`` and ``bytearray`` in-band
without asking any hook, so a value holding one of ``OUT_OF_BAND_MIN`` bytes or more near its top (see
:func:`_holds_large_bytes`) is pickled with a persistent-id hook that sends every such one out of band too;
it arrives as a copy of its own type. Plain ``pickle`` is tried first because it is fastest; code and
objects it cannot handle (lambdas), or would name in ``__main__`` (a script's or notebook's classes and
functions, which the receiver's own ``__main__`` lacks), go by cloudpickle, which sends that code by value. Refs to
results kept on a cluster travel as pickle persistent ids, so the cluster can resolve them without the
value ever crossing the network.

Between processes on one machine, large buffers do not travel through sockets at all: the sender writes
each into its own file in shared memory (``/dev/shm``) and sends the file's name; the receiver maps the
file copy-on-write (so the array is writable and nothing is copied until written) and unlinks it at once.
A file's name carries its owner (by default the writer's pid; a worker's reply: its pid and the request's
id), so that when a reader will never come (the writer died before sending the names) whoever knows the
owner removes them (:func:`remove_shm`); what is left anyway is swept after ``SHM_MAX_AGE_S``. A worker
answering direct calls reuses a few files instead (:class:`ShmPool`): their names hold ``-pool-``, and the
receiver maps them without unlinking, holding a shared lock for as long as it maps them.

Wire layout of one serialized value::

    !BI  version, number of out-of-band buffers (n)
    !Q * n  length of each buffer; the top bit set means "in shared memory": the bytes sent are its file name
    !Q   length of the main pickle stream
    main pickle stream, then the n buffers back to back
"""

from __future__ import annotations

import fcntl
import io
import itertools
import mmap
import os
import pickle
import re
import struct
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import cloudpickle

from runhouse.errors import RemoteError, RemoteTraceback, SerializationError

VERSION = 1
_HEAD = struct.Struct("!BI")
_LEN = struct.Struct("!Q")
_SHARED = 1 << 63
_NO_BUFFERS = _HEAD.pack(VERSION, 0)

SHM_DIR = "/dev/shm"
SHM_PREFIX = "rh-buf-"
# Buffers at least this large go through shared memory when sender and receiver share a machine.
SHM_THRESHOLD = int(os.environ.get("RH_SHM_THRESHOLD", str(1 << 20)))
# Shared-memory files nobody picked up (their receiver died) are removed after this long.
SHM_MAX_AGE_S = 600.0
# bytes and bytearray values this large travel out of band (pickle's own frame size).
OUT_OF_BAND_MIN = 64 * 1024
# How far _holds_large_bytes looks into a value: container levels, and items of each container.
_SCAN_DEPTH = 3
_SCAN_ITEMS = 1000
_BYTES_ID = "rh-bytes"  # first item of the persistent id of an out-of-band bytes or bytearray
_SCALARS_MAX_ITEMS = 32  # a container this large is not looked through for the scalars-only fast path
POOL_MARK = "-pool-"  # in the names of the files a ShmPool reuses: rh-buf-<pid>-pool-<id>
# A ShmPool keeps at most this many files, none larger than SHM_POOL_MAX_BYTES, and drops one unused this long.
SHM_POOL_FILES = 4
SHM_POOL_MAX_BYTES = 1 << 30
SHM_POOL_IDLE_S = float(os.environ.get("RH_SHM_POOL_IDLE_S", "30"))


def shm_available() -> bool:
    """Whether this machine offers a shared-memory folder."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def request_shm_owner(pid: int, request_id: int) -> str:
    """The owner in the names of the shared-memory buffers process ``pid`` writes for its reply to a request."""
    return f"{pid}-{request_id}"


def _to_shm(raw: memoryview, owner: str, created: list[str]) -> bytes:
    """Write ``raw`` into a new shared-memory file named after ``owner``; its path goes to ``created`` first,
    for the caller to remove should anything fail."""
    name = f"{SHM_PREFIX}{owner}-{uuid.uuid4().hex}"
    path = os.path.join(SHM_DIR, name)
    created.append(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = raw.cast("B")
        written = 0
        while written < view.nbytes:
            written += os.write(fd, view[written:])
    finally:
        os.close(fd)
    return name.encode()


class _PoolFile:
    __slots__ = ("name", "path", "fd", "map", "size", "writing", "lent", "used")

    def __init__(self, name: str, fd: int) -> None:
        self.name, self.path, self.fd = name, os.path.join(SHM_DIR, name), fd
        self.map: mmap.mmap | None = None
        self.size = 0
        self.writing = self.lent = False
        self.used = time.monotonic()


class ShmPool:
    """Shared-memory files a worker reuses for the large buffers of its replies.

    A fresh file per reply costs the kernel allocating and freeing its pages each time (half the time of a
    100 MiB return); a reused file's pages stay, so a reply is one copy into memory already there.

    A receiver holds a shared ``flock`` on a file for as long as it maps it (:func:`_from_shm`: the lock is
    on the descriptor its mmap keeps), and the pool writes a file only under the exclusive lock, i.e. when
    nobody maps it. From the reply going out until the receiver has taken its lock, the file is *lent* to
    the caller's list: the caller gives it back (:meth:`give_back`) when its receiver has surely locked or
    dropped it (its next request on a connection, or the connection closed). When every file is in use
    :meth:`lend` answers None and the reply gets a file of its own.
    """

    def __init__(self, owner: str, files: int = SHM_POOL_FILES, max_bytes: int = SHM_POOL_MAX_BYTES) -> None:
        self.owner, self.files, self.max_bytes = owner, files, max_bytes
        self._pool: list[_PoolFile] = []
        self._lock = threading.Lock()

    def lend(self, raw: memoryview, lent: list[_PoolFile]) -> bytes | None:
        """Copy ``raw`` into a free file of the pool and lend it to ``lent``; its name, or None (no file free)."""
        size = raw.nbytes
        if size > self.max_bytes:
            return None
        with self._lock:
            entry = self._take(size)
        if entry is None:
            return None
        try:
            if entry.size != size or entry.map is None:
                if entry.map is not None:
                    entry.map.close()
                    entry.map = None
                os.ftruncate(entry.fd, size)
                entry.size = size
                entry.map = mmap.mmap(entry.fd, size, flags=mmap.MAP_SHARED)
            entry.map[:size] = raw.cast("B")
            os.utime(entry.fd)  # a file in use is never swept as abandoned
        except BaseException:
            with self._lock:
                self._drop(entry)
            raise
        fcntl.flock(entry.fd, fcntl.LOCK_UN)
        with self._lock:
            entry.writing, entry.lent, entry.used = False, True, time.monotonic()
        lent.append(entry)
        return entry.name.encode()

    def _take(self, size: int) -> _PoolFile | None:
        """A file no receiver maps, locked for writing (the lock held; called with ``_lock``)."""
        for entry in sorted(self._pool, key=lambda e: e.size != size):  # one of the same size needs no resize
            if entry.writing or entry.lent:
                continue
            try:
                fcntl.flock(entry.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a receiver still maps it
                continue
            entry.writing = True
            return entry
        if len(self._pool) >= self.files:
            return None
        name = f"{SHM_PREFIX}{self.owner}{POOL_MARK}{uuid.uuid4().hex}"
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        entry = _PoolFile(name, fd)
        entry.writing = True
        self._pool.append(entry)
        return entry

    def give_back(self, lent: list[_PoolFile]) -> None:
        """The receivers of the files in ``lent`` have locked or dropped them: they may be reused once free."""
        if lent:
            with self._lock:
                for entry in lent:
                    entry.lent = False
            lent.clear()

    def trim(self, idle_s: float = SHM_POOL_IDLE_S) -> None:
        """Remove the files unused for ``idle_s`` seconds (a receiver that still maps one keeps its pages)."""
        cutoff = time.monotonic() - idle_s
        with self._lock:
            for entry in [e for e in self._pool if not e.writing and e.used < cutoff]:
                self._drop(entry)

    def close(self) -> None:
        """Remove every file of the pool."""
        self.trim(-1.0)

    def _drop(self, entry: _PoolFile) -> None:
        self._pool.remove(entry)
        if entry.map is not None:
            entry.map.close()
        os.close(entry.fd)
        _unlink(entry.path)


def _unlink(path: str) -> bool:
    """Remove a file; False when it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _from_shm(name: bytes) -> memoryview:
    text = name.decode()
    if not text.startswith(SHM_PREFIX) or "/" in text:
        raise SerializationError(f"refusing shared-memory buffer name {text!r}")
    path = os.path.join(SHM_DIR, text)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise SerializationError(f"shared-memory buffer {text} is gone (already read, or swept)") from None
    pooled = POOL_MARK in text
    try:
        if pooled:  # held until the mapping goes (its mmap keeps a copy of this descriptor): see ShmPool
            fcntl.flock(fd, fcntl.LOCK_SH)
        size = os.fstat(fd).st_size
        mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
        if not pooled:
            os.unlink(path)
    return memoryview(mapped)


def sweep_shm(max_age: float = SHM_MAX_AGE_S) -> int:
    """Remove shared-memory buffers older than ``max_age`` seconds that no receiver picked up."""
    removed = 0
    cutoff = time.time() - max_age
    try:
        entries = list(os.scandir(SHM_DIR))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.name.startswith(SHM_PREFIX) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def remove_shm(owners: Collection[str] | Callable[[str], bool]) -> int:
    """Remove the shared-memory buffers written under any of ``owners`` (see :func:`serialize`; or under any
    owner the function accepts), whose reader will never come; returns how many there were."""
    if callable(owners):
        owned = owners
    else:
        owned = owners.__contains__
    removed = 0
    try:
        entries = list(os.scandir(SHM_DIR))
    except FileNotFoundError:
        return 0
    for entry in entries:
        owner = entry.name[len(SHM_PREFIX) :].rpartition("-")[0]
        if entry.name.startswith(SHM_PREFIX) and owned(owner) and _unlink(entry.path):
            removed += 1
    return removed


Buffer = bytes | bytearray | memoryview
PersistentId = Callable[[Any], Any]
PersistentLoad = Callable[[Any], Any]


# Plain values that hold nothing else (no bytes, no refs): skipped without a call when looking inside values.
SCALAR_TYPES = frozenset({int, float, str, bool, type(None), complex})


def _all_scalars(obj: Any, depth: int = 2) -> bool:
    """Whether ``obj`` is a scalar, or a small tuple, list or dict of them (within ``depth`` levels: a call's
    ``(args, kwargs)``): nothing in it goes out of band, is a ref, or is code, so plain pickle is all it needs."""
    kind = type(obj)
    scalars = SCALAR_TYPES
    if kind in scalars:
        return True
    if depth == 0 or (kind is not tuple and kind is not list and kind is not dict) or len(obj) > _SCALARS_MAX_ITEMS:
        return False
    if kind is dict:
        for key, value in obj.items():
            if type(key) not in scalars or (type(value) not in scalars and not _all_scalars(value, depth - 1)):
                return False
        return True
    for item in obj:
        if type(item) not in scalars and not _all_scalars(item, depth - 1):
            return False
    return True


def _holds_large_bytes(obj: Any, depth: int = _SCAN_DEPTH) -> bool:
    """Whether ``obj`` is, or holds within ``depth`` levels of tuples, lists and dict values (looking at the
    first ``_SCAN_ITEMS`` of each), a ``bytes`` or ``bytearray`` of :data:`OUT_OF_BAND_MIN` bytes or more.

    A bounded look, so values of many small objects keep the all-C pickling path.
    """
    kind = type(obj)
    if kind is bytes or kind is bytearray:
        return len(obj) >= OUT_OF_BAND_MIN
    if depth == 0:
        return False
    if kind is tuple or kind is list:
        items = obj[:_SCAN_ITEMS]
    elif kind is dict:
        items = itertools.islice(obj.values(), _SCAN_ITEMS)
    else:
        return False
    for item in items:
        if type(item) not in SCALAR_TYPES and _holds_large_bytes(item, depth - 1):
            return True
    return False


def _bytes_out_of_band(persistent_id: PersistentId | None) -> PersistentId:
    """A persistent-id hook sending large ``bytes``/``bytearray`` out of band, else asking ``persistent_id``."""

    def hook(obj: Any) -> Any:
        kind = type(obj)
        if (kind is bytes or kind is bytearray) and len(obj) >= OUT_OF_BAND_MIN:
            return (_BYTES_ID, kind is bytearray, pickle.PickleBuffer(obj))
        return None if persistent_id is None else persistent_id(obj)

    return hook


def _bytes_from_buffers(persistent_load: PersistentLoad | None) -> PersistentLoad:
    """The loading side of :func:`_bytes_out_of_band`: other persistent ids go to ``persistent_load``."""

    def load(pid: Any) -> Any:
        if type(pid) is tuple and len(pid) == 3 and pid[0] == _BYTES_ID:
            return bytearray(pid[2]) if pid[1] else bytes(pid[2])
        if persistent_load is None:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return persistent_load(pid)

    return load


# A plain pickle naming module "__main__" (its opcode and length, then the name) refers to a class or function
# of this script or notebook by name, which the receiver's own __main__ lacks: such values go by cloudpickle, which
# sends that code by value. (A string holding the same bytes only costs the slower path.)
_NAMES_MAIN = re.compile(re.escape(b"\x8c\x08__main__"))


def _pickle(obj: Any, pickler_cls: type[pickle.Pickler], persistent_id: PersistentId | None) -> tuple:
    buffers: list[pickle.PickleBuffer] = []
    if _holds_large_bytes(obj):
        persistent_id = _bytes_out_of_band(persistent_id)
    if persistent_id is None and pickler_cls is pickle.Pickler:  # the all-C fast path
        return pickle.dumps(obj, protocol=5, buffer_callback=buffers.append), buffers
    stream = io.BytesIO()
    pickler = pickler_cls(stream, protocol=5, buffer_callback=buffers.append)
    if persistent_id is not None:
        pickler.persistent_id = persistent_id  # type: ignore[method-assign]
    pickler.dump(obj)
    return stream.getbuffer(), buffers


def serialize(
    obj: Any,
    persistent_id: PersistentId | None = None,
    shm: bool = False,
    shm_owner: str | None = None,
    shm_lend: Callable[[memoryview], bytes | None] | None = None,
) -> list[Buffer]:
    """Serialize ``obj`` into a list of buffers to be sent back to back (no concatenation copy).

    With ``shm=True`` (receiver on this machine), buffers of ``SHM_THRESHOLD`` bytes or more are placed in
    shared memory, named after ``shm_owner`` (default: this process's pid), and only their names are sent;
    ``shm_lend`` (a bound :meth:`ShmPool.lend`) places them in reused files when it has one free.

    Raises:
        SerializationError: the value cannot be pickled, even by cloudpickle.
    """
    if _all_scalars(obj):  # the common small call and result: no buffers, no hooks, no look for __main__
        main = pickle.dumps(obj, protocol=5)
        return [_NO_BUFFERS + _LEN.pack(len(main)), main]
    try:
        main, buffers = _pickle(obj, pickle.Pickler, persistent_id)
        by_value = bool(_NAMES_MAIN.search(main))
    except Exception:
        by_value = True
    if by_value:
        try:
            main, buffers = _pickle(obj, cloudpickle.Pickler, persistent_id)
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize {type(obj).__name__} value: {type(exc).__name__}: {exc}. "
                "Pass only picklable values (or make the object picklable with __reduce__)."
            ) from exc
    raws: list[Buffer] = []
    head = bytearray(_HEAD.pack(VERSION, len(buffers)))
    owner = shm_owner or str(os.getpid())
    created: list[str] = []
    try:
        for buffer in buffers:
            raw = buffer.raw()
            if shm and raw.nbytes >= max(SHM_THRESHOLD, 1):
                name = (shm_lend and shm_lend(raw)) or _to_shm(raw, owner, created)
                head += _LEN.pack(_SHARED | len(name))
                raws.append(name)
            else:
                head += _LEN.pack(raw.nbytes)
                raws.append(raw)
    except BaseException:  # (a cancelled call, a full disk) the names are never sent: nobody would read them
        for path in created:
            _unlink(path)
        raise
    head += _LEN.pack(len(main))
    return [bytes(head), main, *raws]


def discard(parts: Sequence[Buffer]) -> None:
    """Remove the shared-memory files of a value from :func:`serialize` that its receiver may never read (the
    request carrying it was refused or failed); files the receiver already took are gone and skipped."""
    head = memoryview(parts[0]) if parts else memoryview(b"")
    if head.nbytes < _HEAD.size:
        return
    _, count = _HEAD.unpack_from(head, 0)
    for index in range(min(count, len(parts) - 2)):
        (field,) = _LEN.unpack_from(head, _HEAD.size + index * _LEN.size)
        if field & _SHARED:
            name = bytes(parts[2 + index]).decode()
            if name.startswith(SHM_PREFIX) and "/" not in name and POOL_MARK not in name:
                _unlink(os.path.join(SHM_DIR, name))


def serialized_size(parts: Sequence[Buffer]) -> int:
    """Total byte length of a list of buffers from :func:`serialize`."""
    size = 0
    for part in parts:  # (on every call's path: no generator, no view of a plain bytes)
        size += len(part) if type(part) is bytes else memoryview(part).nbytes
    return size


def join(parts: Sequence[Buffer]) -> bytes:
    """Concatenate buffers into one ``bytes`` (for small payloads)."""
    return b"".join(parts)


def split(data: Buffer) -> tuple[memoryview, list[memoryview], list[bool]]:
    """The main pickle stream, the out-of-band buffers (views into ``data``) and which buffers are only the
    names of shared-memory files.

    Raises:
        SerializationError: the framing is malformed (checked without unpickling anything).
    """
    view = memoryview(data)
    try:
        version, nbufs = _HEAD.unpack_from(view, 0)
        if version != VERSION:
            raise SerializationError(f"unsupported serialization version {version}; use the same runhouse version")
        if not nbufs:  # the common small value: the main stream alone
            (main_len,) = _LEN.unpack_from(view, _HEAD.size)
            start = _HEAD.size + _LEN.size
            if start + main_len != view.nbytes:
                raise SerializationError(
                    f"malformed serialized value: lengths add up to {start + main_len} bytes, not {view.nbytes}"
                )
            return view[start:], [], []
        offset = _HEAD.size
        fields = [_LEN.unpack_from(view, offset + i * _LEN.size)[0] for i in range(nbufs)]
        sizes = [f & ~_SHARED for f in fields]
        offset += nbufs * _LEN.size
        (main_len,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
    except struct.error as exc:
        raise SerializationError(f"malformed serialized value: {exc}") from exc
    expected = offset + main_len + sum(sizes)
    if expected != view.nbytes:
        raise SerializationError(f"malformed serialized value: lengths add up to {expected} bytes, not {view.nbytes}")
    main = view[offset : offset + main_len]
    offset += main_len
    buffers = []
    for size in sizes:
        buffers.append(view[offset : offset + size])
        offset += size
    return main, buffers, [bool(f & _SHARED) for f in fields]


def deserialize(data: Buffer, persistent_load: PersistentLoad | None = None) -> Any:
    """Rebuild a value from :func:`serialize` output; out-of-band buffers are views into ``data``.

    Raises:
        SerializationError: the data is malformed or names a type not importable here.
    """
    main, buffers, shared = split(data)
    for i, is_shared in enumerate(shared):
        if is_shared:
            buffers[i] = _from_shm(bytes(buffers[i]))
    if persistent_load is None and not buffers:  # the all-C fast path (no out-of-band bytes without buffers)
        try:
            return pickle.loads(main)
        except Exception as exc:
            raise SerializationError(f"cannot deserialize value: {type(exc).__name__}: {exc}") from exc
    unpickler = pickle.Unpickler(io.BytesIO(main), buffers=buffers)
    unpickler.persistent_load = _bytes_from_buffers(persistent_load)  # type: ignore[method-assign]
    try:
        return unpickler.load()
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"cannot deserialize value: {type(exc).__name__}: {exc}") from exc


def code_versions() -> dict[str, str]:
    """What code sent by value needs to be rebuilt as it was: the same Python (major.minor: bytecode changes
    between them) and the same cloudpickle (it supports loading only what its own version wrote)."""
    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}", "cloudpickle": cloudpickle.__version__}


def load_code(payload: Buffer, made_with: Mapping[str, Any], what: str) -> Any:
    """Rebuild code sent by value (cloudpickled) as ``what``, after checking it was written by this Python and
    cloudpickle (``made_with`` holds :func:`code_versions` of the writer; a record without them is tried as is).

    Raises:
        SerializationError: the versions differ, or unpickling failed (a module it refers to is missing here);
            the message says which and what to do.
    """
    here = code_versions()
    differ = [f"{key} {made_with[key]} (here {version})" for key, version in here.items()
              if made_with.get(key, version) != version]
    if differ:
        raise SerializationError(
            f"cannot rebuild {what}: it was sent by value (cloudpickled, as code written in a notebook or "
            f"__main__ is) with {' and '.join(differ)}, and such code only loads with the same versions; use the "
            f"same versions here, or define the code in a module of your repo so it is imported by path")
    try:
        return pickle.loads(payload)
    except ImportError as exc:
        raise SerializationError(
            f"cannot rebuild {what}: it refers to the module {exc.name!r}, which cannot be imported here "
            f"(install it in the env, e.g. reqs=[...], or ship it with your repo)") from exc
    except Exception as exc:
        raise SerializationError(f"cannot rebuild {what}: {type(exc).__name__}: {exc}") from exc


def pack_exception(exc: BaseException) -> dict[str, Any]:
    """Describe an exception for the wire: type name, message, formatted traceback, pickled object if possible."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled: bytes | None = cloudpickle.dumps(exc.with_traceback(None))
        cloudpickle.loads(pickled)  # exceptions with custom __init__ may pickle but not unpickle
    except Exception:
        pickled = None
    return {"type": type(exc).__name__, "message": str(exc), "traceback": tb, "pickled": pickled}


def unpack_exception(info: dict[str, Any]) -> BaseException:
    """Rebuild an exception from :func:`pack_exception`: its own type if importable here, else RemoteError."""
    pickled = info.get("pickled")
    if pickled:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            exc.__cause__ = RemoteTraceback(info.get("traceback", ""))
            return exc
    return RemoteError(info.get("type", "Exception"), info.get("message", ""), info.get("traceback", ""))
