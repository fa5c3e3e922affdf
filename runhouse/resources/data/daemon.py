"""A cluster's disk reached through its daemon: :class:`DaemonSystem`, what a cluster without SSH gives from
``data_system()``."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from runhouse.resources.data import _ops
from runhouse.resources.data.base import DataSystem
from runhouse.resources.data.posix import OPERATION_TIMEOUT_S, PosixSystem
from runhouse.resources.function import Function

if TYPE_CHECKING:
    from runhouse.resources.clusters.base import Cluster

_OPS_NAME = "rh_data_ops"


class DaemonSystem(PosixSystem):
    """A cluster's disk, reached through its daemon: each operation is a call of ``_ops.run`` deployed to the
    cluster (large buffers travel out-of-band). A daemon on this machine shares this disk, so its files are
    used directly unless ``shared_disk=False``.
    """

    kind = "cluster"

    def __init__(self, cluster: Cluster, shared_disk: bool | None = None) -> None:
        self.cluster = cluster
        self.shared_disk = cluster.is_local if shared_disk is None else shared_disk

    @property
    def is_local(self) -> bool:
        return self.shared_disk

    def describe(self) -> str | dict[str, Any]:
        return self.cluster.rns_address or self.cluster.config()

    def same_storage(self, other: DataSystem) -> bool:
        if isinstance(other, DaemonSystem) and other.cluster._endpoint() == self.cluster._endpoint():
            return True
        return super().same_storage(other)

    def _op(self, name: str, *args: Any) -> Any:
        if self.shared_disk:
            return _ops.run(name, *args)
        return _ops_stub(self.cluster)(name, *args, stream_logs=False, timeout=OPERATION_TIMEOUT_S)


_OPS_STUBS: weakref.WeakKeyDictionary[Cluster, Function] = weakref.WeakKeyDictionary()


def _ops_stub(cluster: Cluster) -> Function:
    """``_ops.run`` deployed to ``cluster`` (once per cluster object; re-deploying costs one round trip)."""
    if cluster not in _OPS_STUBS:
        _OPS_STUBS[cluster] = Function(_ops.run, _OPS_NAME).to(cluster)
    return _OPS_STUBS[cluster]
