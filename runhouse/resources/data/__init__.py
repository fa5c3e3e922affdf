"""Data systems: where data resources (folders, blobs, tables) keep their files.

::

    base.py          DataSystem, the contract (each method documents its own), transfer() and shared helpers
    registry.py      system name -> implementation (lazy, with install hints); data_system(system=...)
    posix.py         PosixSystem: POSIX disks worked on by the ops script (_ops.py, stdlib only) wherever they
                     are; FileSystem: this machine ("file")
    daemon.py        DaemonSystem: a cluster's disk through its daemon (operations as calls in a worker)
    ssh.py           SSHSystem: a cluster's disk over SSH (the ops script over the connection, rsync)
    object_store.py  ObjectStoreSystem: "s3" / "gs" buckets through fsspec (s3fs / gcsfs, optional extras)

Resources resolve ``system=`` with :func:`data_system`: a name goes to the registry, a cluster (or a saved
cluster's name or config) is asked for its ``data_system()``. :func:`transfer` moves files between any two
systems through the contract alone; the modules import ``base`` and never each other's backends, except
that the cluster disks build on ``posix``.

Adding a backend:

1. Subclass :class:`DataSystem` in a module of its own and fill in the abstract primitives (``exists``,
   ``walk``, ``ls``, ``size``, ``read``, ``write``, ``mkdir``, ``rm``, ``replace``, ``copy``, ``download``,
   ``upload``, ``open``, ``describe``) as their docstrings state; override ``is_local``, ``same_storage``,
   ``swap`` or ``resumes`` where the system can do better than the defaults.
2. If users name it (``system="az"``), implement :meth:`DataSystem.from_name` and register it, lazily, by
   import path: ``register_implementation("az", "pkg.module.AzureSystem", requires="adlfs",
   install="pip install adlfs")`` (runhouse's own go in ``registry.known_implementations``). If a cluster
   kind has it, return it from that cluster's ``data_system()`` instead.
3. Run the conformance suite against it: a ``SystemContract`` subclass in
   ``tests/integration/data/test_contract.py`` giving its ``target`` fixture.
"""

from __future__ import annotations

from runhouse.resources.data.base import DataSystem, transfer
from runhouse.resources.data.registry import (
    HasDataSystem,
    Implementation,
    SystemSpec,
    available_implementations,
    data_system,
    get_implementation,
    known_implementations,
    register_implementation,
)

__all__ = [
    "DataSystem",
    "HasDataSystem",
    "Implementation",
    "SystemSpec",
    "available_implementations",
    "data_system",
    "get_implementation",
    "known_implementations",
    "register_implementation",
    "transfer",
]
