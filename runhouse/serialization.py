"""How values cross process and machine boundaries.

Values travel as pickle protocol 5 with out-of-band buffers, so numpy arrays, Arrow buffers and bytes are
never copied into the pickle stream: they ride beside it and are rebuilt zero-copy from the receiving
buffer (writable when the receiver reads into a ``bytearray``). Plain ``pickle`` is tried first because it
is fastest; code and objects it cannot handle (lambdas, classes defined in ``__main__``) fall back to
cloudpickle. Refs to results kept on a cluster travel as pickle persistent ids, so the cluster can resolve
them without the value ever crossing the network.

Wire layout of one serialized value::

    !BI  version, number of out-of-band buffers (n)
    !Q * n  length of each buffer
    !Q   length of the main pickle stream
    main pickle stream, then the n buffers back to back
"""

from __future__ import annotations

import io
import pickle
import struct
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from runhouse.errors import RemoteError, RemoteTraceback, SerializationError

VERSION = 1
_HEAD = struct.Struct("!BI")
_LEN = struct.Struct("!Q")

Buffer = bytes | bytearray | memoryview
PersistentId = Callable[[Any], Any]
PersistentLoad = Callable[[Any], Any]


def _pickle(obj: Any, pickler_cls: type[pickle.Pickler], persistent_id: PersistentId | None) -> tuple:
    stream = io.BytesIO()
    buffers: list[pickle.PickleBuffer] = []
    pickler = pickler_cls(stream, protocol=5, buffer_callback=buffers.append)
    if persistent_id is not None:
        pickler.persistent_id = persistent_id  # type: ignore[method-assign]
    pickler.dump(obj)
    return stream.getbuffer(), buffers


def serialize(obj: Any, persistent_id: PersistentId | None = None) -> list[Buffer]:
    """Serialize ``obj`` into a list of buffers to be sent back to back (no concatenation copy).

    Raises:
        SerializationError: the value cannot be pickled, even by cloudpickle.
    """
    try:
        main, buffers = _pickle(obj, pickle.Pickler, persistent_id)
    except Exception:
        try:
            main, buffers = _pickle(obj, cloudpickle.Pickler, persistent_id)
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize {type(obj).__name__} value: {type(exc).__name__}: {exc}. "
                "Pass only picklable values (or make the object picklable with __reduce__)."
            ) from exc
    raws = [b.raw() for b in buffers]
    head = bytearray(_HEAD.pack(VERSION, len(raws)))
    for raw in raws:
        head += _LEN.pack(raw.nbytes)
    head += _LEN.pack(main.nbytes)
    return [bytes(head), main, *raws]


def serialized_size(parts: Sequence[Buffer]) -> int:
    """Total byte length of a list of buffers from :func:`serialize`."""
    return sum(memoryview(p).nbytes for p in parts)


def join(parts: Sequence[Buffer]) -> bytes:
    """Concatenate buffers into one ``bytes`` (for small payloads)."""
    return b"".join(parts)


def split(data: Buffer) -> tuple[memoryview, list[memoryview]]:
    """The main pickle stream and the out-of-band buffers of a serialized value, as views into ``data``.

    Raises:
        SerializationError: the framing is malformed (checked without unpickling anything).
    """
    view = memoryview(data)
    try:
        version, nbufs = _HEAD.unpack_from(view, 0)
        if version != VERSION:
            raise SerializationError(f"unsupported serialization version {version}; use the same runhouse version")
        offset = _HEAD.size
        sizes = [_LEN.unpack_from(view, offset + i * _LEN.size)[0] for i in range(nbufs)]
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
    return main, buffers


def deserialize(data: Buffer, persistent_load: PersistentLoad | None = None) -> Any:
    """Rebuild a value from :func:`serialize` output; out-of-band buffers are views into ``data``.

    Raises:
        SerializationError: the data is malformed or names a type not importable here.
    """
    main, buffers = split(data)
    unpickler = pickle.Unpickler(io.BytesIO(main), buffers=buffers)
    if persistent_load is not None:
        unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    try:
        return unpickler.load()
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"cannot deserialize value: {type(exc).__name__}: {exc}") from exc


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
