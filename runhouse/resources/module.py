"""Modules: classes deployed to a cluster, with named stateful instances living there."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from runhouse import protocol
from runhouse.errors import RunhouseError
from runhouse.protocol import Op
from runhouse.resources import remote

if TYPE_CHECKING:
    from runhouse.resources.clusters.base import Cluster
    from runhouse.resources.env import Env


class Module:
    """Base class for classes meant to run on a cluster.

    Instances record their init arguments, so ``Counter(start=5).to(cluster, name="counter")`` creates the
    same instance on the cluster and returns a handle to it.
    """

    _rh_init_args: tuple[tuple, dict]
    # Client-side conveniences, never remote methods (the attribute protocol.CLIENT_ONLY_ATTR names).
    _rh_client_only: ClassVar[frozenset[str]] = frozenset({"to"})

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__new__(cls)
        obj._rh_init_args = (args, kwargs)
        return obj

    def to(
        self, system: Cluster, env: Env | str | Sequence[str] | None = None, name: str | None = None
    ) -> RemoteInstance:
        """Create this instance (from its init arguments) on ``system``; returns a handle to it."""
        args, kwargs = self._rh_init_args
        return module(type(self)).to(system, env=env)(*args, name=name, **kwargs)


class RemoteClass(remote.Deployable):
    """A class, local until :meth:`to` deploys it; calling the deployed class creates a remote instance."""

    RESOURCE_TYPE = "module"
    KIND = "class"

    @property
    def cls(self) -> type | None:
        """The class itself: the one given, or rebuilt from the saved config of a loaded one (None for a
        handle from ``cluster.get``; raises SerializationError like :attr:`Function.fn`)."""
        return self._rebuilt_code()

    def __call__(self, *args: Any, name: str | None = None, **kwargs: Any) -> RemoteInstance:
        """Create an instance on the cluster, named ``name`` (generated when omitted); returns its handle."""
        system = self._system()
        name = name or f"{self.remote_name}-{uuid.uuid4().hex[:8]}".lower()
        refs: list[str] = []
        parts = remote._pack(system, (args, kwargs), refs, kept=True)
        info = system._control(Op.INSTANTIATE, {"name": name, "class_name": self.remote_name, "refs": refs}, parts)
        return RemoteInstance(system, name, info)


class RemoteMethod:
    """A method of a remote instance: call it, or use ``remote``/``map``/``starmap``/``enqueue``."""

    def __init__(self, instance: RemoteInstance, method: str, is_async: bool) -> None:
        self._system, self._name = instance._rh_system, instance._rh_name
        self.method, self.is_async = method, is_async

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return remote.maybe_async(self.is_async, remote.call, self._system, self._name, self.method, args, kwargs)

    def remote(self, *args: Any, **kwargs: Any) -> remote.Ref:
        return remote.call(self._system, self._name, self.method, args, kwargs, remote=True)

    def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        return remote.call(self._system, self._name, self.method, args, kwargs, enqueue=True)

    def map(self, *iterables: Iterable, **kwargs: Any) -> list[Any]:
        return remote.map_call(self._system, self._name, self.method, iterables, kwargs, star=False)

    def starmap(self, items: Iterable[Sequence[Any]], **kwargs: Any) -> list[Any]:
        return remote.map_call(self._system, self._name, self.method, [items], kwargs, star=True)


class RemoteInstance:
    """A handle to a named instance on a cluster: methods and attributes (get and set) are remote."""

    def __init__(self, system: Cluster, name: str, info: dict[str, Any]) -> None:
        object.__setattr__(self, "_rh_system", system)
        object.__setattr__(self, "_rh_name", name)
        object.__setattr__(self, "_rh_methods", dict(info.get("methods", {})))

    @property
    def name(self) -> str:
        return self._rh_name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr.startswith("_rh_"):
            raise AttributeError(attr)
        if attr in self._rh_methods:
            return RemoteMethod(self, attr, self._rh_methods[attr])
        meta = {"name": self._rh_name, "attr": attr, "shm": self._rh_system.shares_memory}
        return self._rh_system.request(protocol.control_path(Op.GETATTR), meta).value()

    def __setattr__(self, attr: str, value: Any) -> None:
        from runhouse import serialization

        meta = {"name": self._rh_name, "attr": attr}
        parts = serialization.serialize(value, shm=self._rh_system.shares_memory)
        self._rh_system.request(protocol.control_path(Op.SETATTR), meta, parts).value()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return RemoteMethod(self, "__call__", self._rh_methods.get("__call__", False))(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<RemoteInstance {self._rh_name!r} on {self._rh_system!r}>"


def module(cls: type | None = None, name: str | None = None, dryrun: bool = False) -> RemoteClass:
    """Wrap a class so it can be deployed to a cluster.

    Example::

        RemoteCounter = rh.module(Counter).to(rh.here)
        c = RemoteCounter(start=5, name="counter")
        c.increment(); c.value
    """
    if cls is None:
        if name is None:
            raise RunhouseError("rh.module needs a class, or the name of a saved one")
        from runhouse.resources.resource import load_typed

        return load_typed(RemoteClass, name, dryrun=dryrun)
    if not isinstance(cls, type):
        raise RunhouseError(f"rh.module needs a class, got {type(cls).__name__}")
    return RemoteClass(cls, name)
