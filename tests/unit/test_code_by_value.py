"""Code sent by value (written in a notebook or ``__main__``): recorded with the versions that wrote it, and
rebuilt only by the same Python and cloudpickle; anything else is a SerializationError saying why."""

from __future__ import annotations

import base64
import sys
import threading

import cloudpickle
import pytest

import runhouse as rh
from runhouse import serialization
from runhouse.errors import RunhouseError, SerializationError
from runhouse.resources.remote import code_from_spec, describe_code


def _by_value() -> object:
    def add_one(x: int) -> int:
        return x + 1

    return add_one  # a <locals> function: sent by value, like a notebook's


def _saved_spec(**changes: str) -> dict:
    spec, payload, _ = describe_code(_by_value())
    return {**spec, "payload": base64.b64encode(payload).decode(), **changes}


def test_code_sent_by_value_records_the_python_and_cloudpickle_that_wrote_it() -> None:
    spec, payload, _ = describe_code(_by_value())
    assert spec["pickled"] and payload
    assert spec["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert spec["cloudpickle"] == cloudpickle.__version__
    assert code_from_spec(_saved_spec())(1) == 2


@pytest.mark.parametrize(("key", "other"), [("python", "3.9"), ("cloudpickle", "2.2.1")])
def test_code_from_another_version_is_refused_before_unpickling(key: str, other: str) -> None:
    with pytest.raises(SerializationError, match=rf"{key} {other} \(here .*same versions"):
        code_from_spec(_saved_spec(**{key: other}))


def test_a_record_without_versions_is_tried_as_it_is() -> None:
    spec = _saved_spec()
    del spec["python"], spec["cloudpickle"]
    assert code_from_spec(spec)(2) == 3


@pytest.mark.parametrize("payload", ["not base64!", base64.b64encode(b"not a pickle").decode(), ""])
def test_damaged_saved_code_is_a_serialization_error(payload: str) -> None:
    with pytest.raises(SerializationError, match="add_one"):
        code_from_spec(_saved_spec(payload=payload))


def test_load_code_names_a_missing_module() -> None:
    payload = b"cnb_module_nobody_has\nthing\n."  # pickle GLOBAL opcode: nb_module_nobody_has.thing
    with pytest.raises(SerializationError, match="module 'nb_module_nobody_has', which cannot be imported"):
        serialization.load_code(payload, serialization.code_versions(), "'thing'")


def test_code_using_an_unpicklable_global_says_what_to_do() -> None:
    lock = threading.Lock()

    def holds_lock() -> object:
        return lock

    with pytest.raises(SerializationError, match="cannot send .*holds_lock.* by value.*create it inside"):
        describe_code(holds_lock)


def test_a_lambda_needs_a_name() -> None:
    with pytest.raises(RunhouseError, match="needs a named function, or name="):
        rh.function(lambda x: x)
    assert rh.function(lambda x: x, name="identity").name == "identity"


def test_values_of_classes_named_in_main_travel_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # A notebook's class: plain pickle finds it in this __main__ and would send only its name, which the
    # receiver's __main__ lacks.
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    Point.__module__, Point.__qualname__ = "__main__", "Point"
    monkeypatch.setattr(sys.modules["__main__"], "Point", Point, raising=False)
    parts = serialization.serialize([Point(3)])
    monkeypatch.delattr(sys.modules["__main__"], "Point")  # the receiver's __main__
    (point,) = serialization.deserialize(serialization.join(parts))
    assert point.x == 3
