"""Which class serves each ``system=`` name, imported only when the name is first used, and
:func:`data_system`, what a ``system=`` argument means.

As in fsspec's registry, the known implementations are import paths with what they need installed, so that
importing runhouse imports no backend, and a backend whose optional dependency is missing raises an
:class:`ImportError` saying what to install::

    known_implementations            name -> Implementation(target import path, requires, install)
    get_implementation(name)         the class (imported on first use, then kept)
    register_implementation(...)     add a name: an import path (lazy) or a class
    missing_dependency_error(name)   the ImportError naming what ``name`` needs installed
    data_system(system, options)     a DataSystem, a name, a cluster, a cluster's name or config -> DataSystem

Clusters are not registered: a cluster says which data system its disk is (``cluster.data_system()``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

from runhouse.errors import ConfigError
from runhouse.resources.data.base import DataSystem
from runhouse.resources.resource import Resource, load


@dataclass(frozen=True)
class Implementation:
    """A data system known by name but not imported yet."""

    target: str  # "package.module.ClassName", a DataSystem subclass implementing from_name
    requires: str | None = None  # the optional package it needs ("s3fs"), named in the install hint
    install: str | None = None  # how to install it ('pip install "runhouse[s3]"')


known_implementations: dict[str, Implementation] = {
    "file": Implementation("runhouse.resources.data.posix.FileSystem"),
    "s3": Implementation(
        "runhouse.resources.data.object_store.ObjectStoreSystem", requires="s3fs", install='pip install "runhouse[s3]"'
    ),
    "gs": Implementation(
        "runhouse.resources.data.object_store.ObjectStoreSystem", requires="gcsfs", install='pip install "runhouse[gs]"'
    ),
}
_registry: dict[str, type[DataSystem]] = {}  # name -> its class, once imported (or registered as a class)
_ALIASES = {"here": "file", "local": "file"}


def available_implementations() -> list[str]:
    """Every name ``system=`` takes for a data system (clusters aside), sorted."""
    return sorted(known_implementations)


def register_implementation(
    name: str,
    target: str | type[DataSystem],
    *,
    requires: str | None = None,
    install: str | None = None,
    clobber: bool = False,
) -> None:
    """Make ``system=name`` (and ``"name://LOCATION"``) mean ``target``, a :class:`DataSystem` subclass
    implementing :meth:`~DataSystem.from_name`, or its import path (imported when the name is first used).

    Args:
        requires: the optional package ``target`` needs; with ``install``, what the error says when it is missing.
        clobber: replace what ``name`` already means instead of raising.

    Raises:
        ConfigError: ``name`` already means something else and ``clobber`` is false.

    Example::

        register_implementation("az", "my_package.azure.AzureSystem", requires="adlfs", install="pip install adlfs")
    """
    path = _target_path(target)
    if not clobber and name in known_implementations and known_implementations[name].target != path:
        raise ConfigError(
            f"data system {name!r} is already {known_implementations[name].target}; pass clobber=True to replace it"
        )
    known_implementations[name] = Implementation(path, requires, install)
    _registry.pop(name, None)
    if not isinstance(target, str):
        _registry[name] = target


def _target_path(target: str | type[DataSystem]) -> str:
    return target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"


def get_implementation(name: str) -> type[DataSystem]:
    """The class serving ``system=name``, imported on first use.

    Raises:
        ConfigError: no data system is registered as ``name``.
        ImportError: importing it failed; the message says what to install.
    """
    if name not in _registry:
        if name not in known_implementations:
            raise ConfigError(f"no data system is named {name!r}: use one of {available_implementations()}")
        module_name, _, class_name = known_implementations[name].target.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except ImportError as exc:
            raise missing_dependency_error(name) from exc
        if not (isinstance(cls, type) and issubclass(cls, DataSystem)):
            raise ConfigError(f"data system {name!r}: {known_implementations[name].target} is not a DataSystem")
        _registry[name] = cls
    return _registry[name]


def missing_dependency_error(name: str) -> ImportError:
    """The error for the data system ``name`` missing its optional dependency, saying what to install."""
    known = known_implementations.get(name)
    if known is None or known.requires is None:
        return ImportError(f"the data system {name!r} could not be imported")
    return ImportError(f"{name!r} data needs {known.requires}: {known.install or f'pip install {known.requires}'}")


@runtime_checkable
class HasDataSystem(Protocol):
    """What has a data system of its own: a cluster, whose disk it is."""

    def data_system(self) -> DataSystem:
        """The data system of this thing's disk."""


SystemSpec: TypeAlias = DataSystem | HasDataSystem | str | Mapping[str, Any] | None  # what system= takes


def data_system(system: SystemSpec = None, storage_options: Mapping[str, Any] | None = None) -> DataSystem:
    """The data system ``system`` names.

    ``None``, ``"file"``, ``"here"`` or ``"local"``: this machine; a registered name such as ``"s3"`` or
    ``"gs"`` (or ``"s3://BUCKET"``, which also sets the bucket of default locations): that system with
    ``storage_options`` (``endpoint_url``, ...); a cluster, a saved cluster's name or a cluster config: the
    data system the cluster says it has; a :class:`DataSystem`: itself.

    Raises:
        ConfigError: ``system`` is none of these (a saved resource that is not a cluster, say).
        ImportError: the named system needs an optional package that is not installed.

    Example::

        data_system("s3://my-bucket", {"endpoint_url": "http://127.0.0.1:9000"})
    """
    if isinstance(system, DataSystem):
        return system
    if system is None:
        system = "file"
    owner: object = system
    if isinstance(system, str):
        name, _, location = _ALIASES.get(system, system).partition("://")
        if name in known_implementations:
            return get_implementation(name).from_name(name, location or None, storage_options)
        owner = load(system)
    elif isinstance(system, Mapping):
        owner = Resource.from_config(dict(system))
    if isinstance(owner, HasDataSystem):
        return owner.data_system()
    what = f"a {owner.RESOURCE_TYPE}" if isinstance(owner, Resource) else f"of type {type(owner).__name__}"
    raise ConfigError(
        f"system={system!r} is {what}: use {', '.join(map(repr, available_implementations()))}, "
        "a cluster, or a cluster's name or config"
    )


def documented_location(path: str | None, url: str | None, system: Any, fs: Any) -> tuple[str | None, Any]:
    """``(path, system)`` of a data resource given with Runhouse's documented names too (``url=``, ``fs=``).

    Raises:
        ValueError: both names of one thing were given, with different values.
    """
    for ours, theirs, what in ((path, url, "path= and url="), (system, fs, "system= and fs=")):
        if ours is not None and theirs is not None and ours != theirs:
            raise ValueError(f"{what} name the same thing and disagree ({ours!r}, {theirs!r}); give one")
    return (path if path is not None else url), (system if system is not None else fs)
