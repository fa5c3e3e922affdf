"""runhouse: program across machines as if they were one.

Example::

    import runhouse as rh

    remote_add = rh.function(add).to(rh.here)
    remote_add(1, 2)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from runhouse.errors import (  # noqa: E402
    CallTimeoutError,
    MapError,
    RemoteError,
    RunhouseError,
    WorkerCrashedError,
)
from runhouse.resources.cluster import Cluster, cluster  # noqa: E402
from runhouse.resources.env import Env, env  # noqa: E402
from runhouse.resources.function import Function, function  # noqa: E402
from runhouse.resources.module import Module, RemoteClass, RemoteInstance, module  # noqa: E402
from runhouse.resources.remote import Ref, get  # noqa: E402


def __getattr__(name: str) -> Any:
    if name == "here":  # resolved on each access so RH_SERVER_PORT set later is honoured
        from runhouse.resources.cluster import here

        return here()
    raise AttributeError(f"module 'runhouse' has no attribute {name!r}")


__all__ = [
    "CallTimeoutError",
    "Cluster",
    "Env",
    "Function",
    "MapError",
    "Module",
    "Ref",
    "RemoteClass",
    "RemoteError",
    "RemoteInstance",
    "RunhouseError",
    "WorkerCrashedError",
    "__version__",
    "cluster",
    "env",
    "function",
    "get",
    "here",
    "module",
]
