from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import runhouse as rh
from runhouse import errors
from runhouse.resources.remote import _map_items, describe_code


def test_public_api_is_sorted_and_complete():
    assert rh.__all__ == sorted(rh.__all__)
    for name in rh.__all__:
        assert hasattr(rh, name), name


def test_type_checkers_see_the_same_public_names_as_runtime():
    source = Path(rh.__file__).read_text()
    tree = ast.parse(source).body
    block = next(node for node in tree if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {alias.asname or alias.name for node in block.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert imported == set(rh._EXPORTS)
    assert set(rh.__all__) == set(rh._EXPORTS) | {"__version__", "here"}


def test_here_follows_rh_server_port(monkeypatch):
    monkeypatch.setenv("RH_SERVER_PORT", "32555")
    assert rh.here.server_port == 32555
    monkeypatch.setenv("RH_SERVER_PORT", "not-a-port")
    with pytest.raises(errors.ConfigError, match="RH_SERVER_PORT"):
        rh.here  # noqa: B018


def test_every_error_is_a_runhouse_error_and_builtins_match_meaning():
    assert issubclass(errors.ObjectNotFoundError, KeyError)
    assert issubclass(errors.CallTimeoutError, TimeoutError)
    assert issubclass(errors.ClusterUnreachableError, ConnectionError)
    assert issubclass(errors.BadRequestError, ValueError)
    for cls in errors.BY_NAME.values():
        assert issubclass(cls, errors.RunhouseError)


def test_map_error_carries_each_item():
    boom = ValueError("boom")
    error = errors.MapError([1, boom, 3])
    assert error.errors == {1: boom}
    assert "1 of 3 items failed" in str(error)


def test_map_items_zip_like_builtin_map_and_broadcast_keywords():
    assert _map_items([[1, 2, 3], [4, 5]], {}, star=False) == [((1, 4), {}), ((2, 5), {})]
    assert _map_items([[1, 2]], {"b": [7, 8], "c": "same"}, star=False) == [
        ((1,), {"b": 7, "c": "same"}),
        ((2,), {"b": 8, "c": "same"}),
    ]
    assert _map_items([[1, 2]], {"b": [7, 8, 9]}, star=False) == [((1,), {"b": [7, 8, 9]}), ((2,), {"b": [7, 8, 9]})]
    assert _map_items([[(1, 2), (3, 4)]], {}, star=True) == [((1, 2), {}), ((3, 4), {})]
    assert _map_items([], {"a": [1, 2]}, star=False) == [((), {"a": 1}), ((), {"a": 2})]
    with pytest.raises(ValueError, match="at least one iterable"):
        _map_items([], {"a": 1}, star=False)


def test_importable_code_is_described_by_import_path():
    spec, payload, version = describe_code(describe_code)
    assert payload == b""
    assert spec["module"] == "runhouse.resources.remote"
    assert Path(spec["root"]) / "runhouse" == Path(sys.modules["runhouse"].__file__).parent


def test_local_code_is_sent_by_value_and_versioned_by_content():
    def local():
        return 1

    spec, payload, version = describe_code(local)
    assert spec["pickled"] and payload
    assert describe_code(local)[2] == version


def test_env_names_are_validated():
    with pytest.raises(errors.InvalidNameError):
        rh.env(name="../escape")
    assert rh.env().name == "default"
    assert rh.env(reqs=["numpy"]).name == rh.env(reqs=["numpy"]).name != "default"
    with pytest.raises(ValueError, match="memory_limit_mb"):
        rh.env(memory_limit_mb=-1)


def test_undeployed_function_says_how_to_deploy():
    with pytest.raises(errors.RunhouseError, match=r"\.to\(cluster\)"):
        rh.function(len)([1])


def test_client_side_methods_of_rh_module_are_never_offered_remotely():
    from runhouse.server.worker import describe

    class Counter(rh.Module):
        def increment(self) -> int:
            return 1

    class Plain:
        def to(self) -> str:
            return "a method of the user's own"

    assert set(describe(Counter)["methods"]) == {"increment"}
    assert "to" in describe(Plain)["methods"]


def test_a_requirement_string_is_one_requirement_never_its_letters():
    assert rh.env(reqs="numpy").reqs == ["numpy"]
    assert rh.env(reqs=["numpy", "pandas>=2"]).reqs == ["numpy", "pandas>=2"]
    for bad in (5, ["numpy", 3], [""], {"numpy": "1.26"}):
        with pytest.raises(TypeError, match="requirement"):
            rh.env(reqs=bad)
    with pytest.raises(ValueError, match="memory_limit_mb"):
        rh.env(reqs=["numpy"], memory_limit_mb=True)
