from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from runhouse import serialization
from runhouse.errors import RemoteError, RemoteTraceback, SerializationError


def roundtrip(value, **kw):
    return serialization.deserialize(bytearray(serialization.join(serialization.serialize(value))), **kw)


def test_plain_values_roundtrip():
    value = {"a": [1, 2.5, "x", None], "b": (True, b"bytes"), "c": {1, 2}}
    assert roundtrip(value) == value


def test_numpy_arrays_travel_out_of_band_and_arrive_writable():
    array = np.arange(1_000_000, dtype=np.float64)
    parts = serialization.serialize(array)
    assert len(parts) == 3, "header, pickle stream, one out-of-band buffer"
    assert memoryview(parts[1]).nbytes < 1000, "the array data is not inside the pickle stream"
    back = roundtrip(array)
    assert np.array_equal(back, array)
    back[0] = 42.0  # received into a bytearray: writable


LARGE = serialization.OUT_OF_BAND_MIN


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_travel_out_of_band_and_keep_their_type(kind):
    value = kind(os.urandom(4 * LARGE))
    parts = serialization.serialize(value)
    assert len(parts) == 3, "header, pickle stream, one out-of-band buffer"
    assert memoryview(parts[1]).nbytes < 200, "the bytes are not inside the pickle stream"
    back = roundtrip(value)
    assert type(back) is kind and back == value


def test_large_bytes_inside_call_arguments_travel_out_of_band():
    data = os.urandom(LARGE)
    arguments = (("root", {"a.bin": data, "b.bin": data[:10]}), {"offset": 0})
    parts = serialization.serialize(arguments)
    assert len(parts) == 3 and memoryview(parts[1]).nbytes < 300
    assert roundtrip(arguments) == arguments


def test_small_bytes_stay_in_the_pickle_stream():
    parts = serialization.serialize([b"x" * (LARGE - 1), bytearray(10)])
    assert len(parts) == 2, "header and pickle stream only"


def test_large_bytes_between_processes_go_through_shared_memory():
    value = os.urandom(2 * serialization.SHM_THRESHOLD)
    parts = serialization.serialize(value, shm=True)
    assert parts[2].startswith(serialization.SHM_PREFIX.encode()), "only the file's name is sent"
    back = serialization.deserialize(serialization.join(parts))
    assert type(back) is bytes and back == value


def test_a_pool_reuses_a_file_only_once_its_receiver_lets_go_and_trims_idle_ones():
    pool = serialization.ShmPool(f"{os.getpid()}test", files=2)
    size = 2 * serialization.SHM_THRESHOLD
    lent: list = []
    try:
        parts = serialization.serialize(np.full(size, 1, np.uint8), shm=True, shm_lend=lambda raw: pool.lend(raw, lent))
        name = bytes(parts[2])
        assert serialization.POOL_MARK.encode() in name and len(lent) == 1
        first = serialization.deserialize(serialization.join(parts))
        pool.give_back(lent)
        assert os.path.exists(os.path.join(serialization.SHM_DIR, name.decode())), "a pooled file is not unlinked"
        second = pool.lend(memoryview(np.full(size, 2, np.uint8)), lent)
        assert second is not None and second != name  # the first is still mapped: another file
        assert pool.lend(memoryview(np.full(size, 3, np.uint8)), lent) is None  # both lent: none free
        assert (first == 1).all()
        del first
        pool.give_back(lent)
        assert pool.lend(memoryview(np.full(size, 4, np.uint8)), lent) in (name, second)  # let go: reused
        held = serialization.deserialize(serialization.join([parts[0], parts[1], lent[0].name.encode()]))
        pool.trim(-1.0)  # idle files go, lent or not; a mapping keeps its pages
        assert not [n for n in os.listdir(serialization.SHM_DIR) if n.startswith(f"rh-buf-{os.getpid()}test")]
        assert (held == 4).all()
    finally:
        pool.close()


def test_scalars_take_plain_pickle_and_anything_else_the_full_path():
    call = ((1, 2.5, "x", None, True), {"k": 3j, "n": "v"})
    parts = serialization.serialize(call, persistent_id=lambda obj: pytest.fail("hook asked for scalars"))
    assert bytes(parts[1]) == pickle.dumps(call, protocol=5) and roundtrip(call) == call
    for value in ({int: 1}, (np.int64(3),), [b"x" * serialization.OUT_OF_BAND_MIN], list(range(100)),
                  ((), {"deep": (1, [2, {"a": 1}])})):
        back = roundtrip(value)
        assert back == value or (type(back) is type(value) and len(back) == len(value))


def test_out_of_band_bytes_and_persistent_ids_travel_together():
    class Handle:
        key = "k1"

    data = os.urandom(LARGE)
    parts = serialization.serialize([Handle(), data], lambda o: ("ref", o.key) if isinstance(o, Handle) else None)
    back = serialization.deserialize(serialization.join(parts), lambda pid: f"resolved {pid[1]}")
    assert back == ["resolved k1", data]


def test_buffers_are_views_not_copies():
    array = np.arange(1000, dtype=np.int64)
    data = bytearray(serialization.join(serialization.serialize(array)))
    back = serialization.deserialize(data)
    back[0] = 123456789
    assert (123456789).to_bytes(8, "little") in data


def test_lambdas_and_local_classes_fall_back_to_cloudpickle():
    class Local:
        x = 3

    fn = roundtrip(lambda y: y + Local.x)
    assert fn(1) == 4


def test_unpicklable_value_is_a_serialization_error():
    import threading

    with pytest.raises(SerializationError, match="cannot serialize lock"):
        serialization.serialize(threading.Lock())


@pytest.mark.parametrize(
    "data", [b"", b"\x01", b"\x02\x00\x00\x00\x00" + b"\x00" * 8, b"\x01\x00\x00\x00\x00" + b"\x00" * 9]
)
def test_malformed_data_is_a_serialization_error(data):
    with pytest.raises(SerializationError):
        serialization.deserialize(data)


def test_persistent_ids_carry_references():
    class Handle:
        def __init__(self, key):
            self.key = key

    parts = serialization.serialize([Handle("k1"), 2], lambda o: ("ref", o.key) if isinstance(o, Handle) else None)
    back = serialization.deserialize(serialization.join(parts), lambda pid: f"resolved {pid[1]}")
    assert back == ["resolved k1", 2]


def test_exception_keeps_type_and_gets_remote_traceback_as_cause():
    try:
        raise KeyError("missing")
    except KeyError as exc:
        info = serialization.pack_exception(exc)
    rebuilt = serialization.unpack_exception(pickle.loads(pickle.dumps(info)))
    assert isinstance(rebuilt, KeyError)
    assert isinstance(rebuilt.__cause__, RemoteTraceback)
    assert "raise KeyError" in str(rebuilt.__cause__)


def test_exception_that_cannot_be_rebuilt_becomes_remote_error():
    class Picky(Exception):
        def __init__(self, a, b):
            super().__init__(a + b)

    try:
        raise Picky("x", "y")
    except Picky as exc:
        info = serialization.pack_exception(exc)
    rebuilt = serialization.unpack_exception(info)
    assert isinstance(rebuilt, RemoteError)
    assert (rebuilt.type_name, rebuilt.message) == ("Picky", "xy")
    assert "raise Picky" in rebuilt.traceback
