"""runhouse: program across machines as if they were one.

Example::

    import runhouse as rh

    remote_add = rh.function(add).to(rh.here)
    remote_add(1, 2)

Attributes are imported on first use, so processes that need only part of the package (the daemon's
workers above all) start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from runhouse.version import __version__

# The public API: each name and the module it lives in. ``__all__`` is made from it, and a unit test checks
# that the type checkers' imports below name the same things.
_EXPORTS = {
    "Blob": "runhouse.resources.blob",
    "CallTimeoutError": "runhouse.errors",
    "Cluster": "runhouse.resources.clusters",
    "Env": "runhouse.resources.env",
    "Folder": "runhouse.resources.folder",
    "Function": "runhouse.resources.function",
    "MapError": "runhouse.errors",
    "Module": "runhouse.resources.module",
    "Package": "runhouse.resources.package",
    "Ref": "runhouse.resources.remote",
    "RemoteClass": "runhouse.resources.module",
    "RemoteError": "runhouse.errors",
    "RemoteInstance": "runhouse.resources.module",
    "Resource": "runhouse.resources.resource",
    "RunhouseError": "runhouse.errors",
    "Secret": "runhouse.resources.secret",
    "Secrets": "runhouse.resources.secret",
    "Table": "runhouse.resources.table",
    "WorkerCrashedError": "runhouse.errors",
    "blob": "runhouse.resources.blob",
    "cluster": "runhouse.resources.clusters",
    "configs": "runhouse.account",
    "current_folder": "runhouse.rns.store",
    "env": "runhouse.resources.env",
    "exists": "runhouse.resources.resource",
    "folder": "runhouse.resources.folder",
    "folder_contents": "runhouse.rns.store",
    "function": "runhouse.resources.function",
    "get": "runhouse.resources.remote",
    "load": "runhouse.resources.resource",
    "login": "runhouse.account",
    "logout": "runhouse.account",
    "module": "runhouse.resources.module",
    "ondemand_cluster": "runhouse.resources.clusters",
    "package": "runhouse.resources.package",
    "secret": "runhouse.resources.secret",
    "send": "runhouse.resources.function",
    "set_folder": "runhouse.rns.store",
    "table": "runhouse.resources.table",
}

if TYPE_CHECKING:
    from runhouse.account import configs, login, logout
    from runhouse.errors import CallTimeoutError, MapError, RemoteError, RunhouseError, WorkerCrashedError
    from runhouse.resources.blob import Blob, blob
    from runhouse.resources.clusters import Cluster, cluster, ondemand_cluster
    from runhouse.resources.env import Env, env
    from runhouse.resources.folder import Folder, folder
    from runhouse.resources.function import Function, function, send
    from runhouse.resources.module import Module, RemoteClass, RemoteInstance, module
    from runhouse.resources.package import Package, package
    from runhouse.resources.remote import Ref, get
    from runhouse.resources.resource import Resource, exists, load
    from runhouse.resources.secret import Secret, Secrets, secret
    from runhouse.resources.table import Table, table
    from runhouse.rns.store import current_folder, folder_contents, set_folder

    here: Cluster


def __getattr__(name: str) -> Any:
    if name == "here":  # resolved on each access so RH_SERVER_PORT set later is honoured
        from runhouse.resources.clusters import here

        return here()
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'runhouse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = sorted([*_EXPORTS, "__version__", "here"])
