"""The provisioning seam: what an on-demand cluster needs from whatever makes its machines.

A :class:`Provisioner` launches, finds, stops and deletes the machines of a cluster by the cluster's name, and
says how to reach them (:class:`Machines`: their ips, the SSH user and key). Everything after that is the
same bring-up as a cluster you bring (:mod:`runhouse.resources.clusters.ssh`, ``ray``). Provisioners are
registered by name and loaded lazily, so ``import runhouse`` never imports a cloud library:

- ``"sky"``: SkyPilot (extra ``runhouse[sky]``), :mod:`runhouse.resources.clusters.sky`;
- tests register one that "launches" loopback sshd hosts, so the whole lifecycle runs for real without a cloud.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runhouse.errors import ProvisioningError

UP, STOPPED, INIT = "UP", "STOPPED", "INIT"


@dataclass(frozen=True)
class LaunchRequest:
    """What to launch: the on-demand cluster's arguments, checked (see :func:`runhouse.ondemand_cluster`)."""

    cluster_name: str
    instance_type: str | None = None  # accelerators like "A10G:1", or a cloud's instance type like "m5.xlarge"
    provider: str | None = None  # "aws", "gcp", "azure", "lambda", "kubernetes", ...; None or "cheapest": any
    num_instances: int = 1
    use_spot: bool = False
    region: str | None = None
    image_id: str | None = None  # a machine image, or "docker:<image>"
    memory: str | None = None  # like "32" or "32+" (GiB)
    disk_size: int | None = None  # GiB
    open_ports: tuple[int | str, ...] = ()
    autostop_mins: float | None = None  # None or negative: never


@dataclass(frozen=True)
class Machines:
    """How to reach a launched cluster: its state, node ips (head first), and SSH login."""

    state: str  # UP, STOPPED or INIT (being made, or in a state only the provisioner can repair)
    ips: Sequence[str] = ()
    ssh_user: str | None = None
    ssh_private_key: str | None = None  # a path on this machine
    ssh_port: int = 22
    ssh_proxy_command: str | None = None  # how SSH reaches them when not directly (Kubernetes pods, bastions)
    details: Mapping[str, Any] = field(default_factory=dict)  # what the provisioner says besides (cloud, region...)

    def ssh_creds(self) -> dict[str, Any]:
        """The ``ssh_creds`` dict of a cluster reaching these machines (keys it leaves out: not needed)."""
        creds: dict[str, Any] = {"ssh_port": self.ssh_port}
        for key, value in (("ssh_user", self.ssh_user), ("ssh_private_key", self.ssh_private_key),
                           ("ssh_proxy_command", self.ssh_proxy_command)):
            if value:
                creds[key] = value
        return creds


# The ``ssh_creds`` keys that come from the machines (replaced whenever they are found again).
MACHINE_CREDS_KEYS = ("ssh_port", "ssh_user", "ssh_private_key", "ssh_proxy_command")


class Provisioner(abc.ABC):
    """Makes and manages the machines of on-demand clusters, each known by its cluster name.

    Every method is synchronous, bounded in time, and raises :class:`~runhouse.errors.ProvisioningError` with
    a one-line message naming the fix when the provisioner cannot work here (not installed, no credentials).
    """

    name: str = ""

    @abc.abstractmethod
    def launch(self, request: LaunchRequest) -> Machines:
        """Make the machines (or start them again when stopped) and return once they answer SSH, state UP."""

    @abc.abstractmethod
    def status(self, cluster_name: str) -> Machines | None:
        """The cluster's machines as they are now, or None when none exist under that name."""

    @abc.abstractmethod
    def stop(self, cluster_name: str) -> None:
        """Stop the machines, keeping their disks (launch starts them again); nothing when there are none."""

    @abc.abstractmethod
    def down(self, cluster_name: str) -> None:
        """Delete the machines and their disks; nothing when there are none."""

    @abc.abstractmethod
    def set_autostop(self, cluster_name: str, idle_minutes: float | None, down: bool = False) -> None:
        """The provisioner's own autostop for the cluster (a second line behind runhouse's): None or negative
        turns it off."""

    def self_stop_command(self, cluster_name: str, down: bool = False) -> str | None:
        """A shell command that, run on the head node, stops (or deletes) the cluster's machines: the action
        of runhouse's idle timer there. None: the provisioner's own autostop does it."""
        return None

    def keepalive_command(self, cluster_name: str) -> str | None:
        """A shell command that, run on the head node, tells the provisioner's own autostop the machines are in
        use (the daemon runs it now and then while calls come). None: nothing to tell."""
        return None


# Provisioners by name: a module and class name, imported on first use.
_REGISTERED: dict[str, Callable[[], Provisioner] | tuple[str, str]] = {
    "sky": ("runhouse.resources.clusters.sky", "SkyProvisioner"),
}
_MADE: dict[str, Provisioner] = {}


def register_provisioner(name: str, factory: Callable[[], Provisioner]) -> None:
    """Make ``factory()`` the provisioner called ``name`` (replacing any before it)."""
    _REGISTERED[name] = factory
    _MADE.pop(name, None)


def provisioner(name: str) -> Provisioner:
    """The provisioner called ``name``, made on first use.

    Raises:
        ProvisioningError: no provisioner has that name, or its library is not installed (says what to install).
    """
    if name not in _MADE:
        entry = _REGISTERED.get(name)
        if entry is None:
            raise ProvisioningError(f"no provisioner named {name!r}; known: {', '.join(sorted(_REGISTERED))}")
        if isinstance(entry, tuple):
            module, attribute = entry
            _MADE[name] = getattr(importlib.import_module(module), attribute)()
        else:
            _MADE[name] = entry()
    return _MADE[name]
