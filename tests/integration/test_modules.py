"""Classes on a cluster: named stateful instances, methods, attributes, handles."""

from __future__ import annotations

import asyncio

import pytest

import runhouse as rh
from runhouse.errors import ObjectNotFoundError
from tests.integration import funcs


@pytest.fixture(scope="module")
def RemoteCounter(cluster):
    return rh.module(funcs.Counter).to(cluster)


def test_named_instance_keeps_state_between_calls(RemoteCounter):
    counter = RemoteCounter(start=5, name="counter_a")
    assert counter.increment() == 6
    assert counter.increment(by=10) == 16
    assert counter.value == 16


def test_attributes_can_be_set_remotely(RemoteCounter):
    counter = RemoteCounter(name="counter_b")
    counter.value = 41
    assert counter.increment() == 42
    assert counter.doubled == 84


def test_cluster_get_returns_a_handle_to_the_instance(cluster, RemoteCounter):
    RemoteCounter(start=1, name="counter_c").increment()
    handle = cluster.get("counter_c")
    assert handle.value == 2
    assert handle.increment() == 3


def test_async_method_is_awaitable(RemoteCounter):
    counter = RemoteCounter(start=0, name="counter_d")
    assert asyncio.run(counter.aincrement()) == 1


def test_method_map_and_remote(RemoteCounter):
    counter = RemoteCounter(start=0, name="counter_e")
    assert sorted(counter.increment.map([1, 1, 1])) == [1, 2, 3]
    assert rh.get(counter.increment.remote(by=2)) == 5


def test_unknown_method_is_not_found(RemoteCounter):
    counter = RemoteCounter(name="counter_f")
    with pytest.raises(ObjectNotFoundError):
        counter.no_such_method()  # not a known method: fetched as an attribute, which is missing


def test_rh_module_subclass_is_created_from_its_init_args(cluster):
    model = funcs.Model(scale=3).to(cluster, name="model")
    assert model.predict(2) == 6
    assert cluster.get("model").scale == 3


def test_cluster_get_returns_a_callable_function_handle(cluster):
    rh.function(funcs.add).to(cluster)
    assert cluster.get("add")(2, 3) == 5


def test_instance_init_args_may_be_refs(cluster, RemoteCounter):
    start = rh.function(funcs.add).to(cluster).remote(40, 2)
    assert RemoteCounter(start=start, name="counter_g").value == 42
