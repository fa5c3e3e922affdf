"""Clusters: where daemons run. ``base.py`` declares the seam (the abstract :class:`Cluster` and its hooks);
``direct.py``, ``ssh.py`` and ``ray.py`` (several machines made one Ray cluster) fill it in; ``code.py``
ships code to hosts; ``local_daemon.py`` starts and stops the daemon on this machine.

Example::

    gpu = rh.cluster(name="rh-a10x", ips=["10.0.0.5"], ssh_creds={"ssh_user": "ubuntu"})
    box = rh.cluster(name="box", host="localhost", server_port=32301)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runhouse.paths import default_server_port
from runhouse.resources.clusters.base import Cluster
from runhouse.resources.clusters.direct import DirectCluster

__all__ = ["Cluster", "DirectCluster", "cluster", "here", "ondemand_cluster"]


# The keywords of the kinds of clusters rh.cluster makes, beyond its own parameters.
_OPTIONS = (
    "server_connection_type", "accept_new_host_keys", "allow_upgrade", "autostop_mins", "autostop_command",
    "ray_port", "node_resources",
    "instance_type", "provider", "num_instances", "use_spot", "region", "image_id", "memory", "disk_size",
    "open_ports", "provisioner", "cluster_name", "ssh_key_secret", "default_env", "den_auth",
)


def cluster(
    name: str | None = None,
    host: str | None = None,
    server_port: int | None = None,
    token: str | None = None,
    dryrun: bool = False,
    ips: Sequence[str] | None = None,
    ssh_creds: dict[str, Any] | None = None,
    **ssh_options: Any,
) -> Cluster:
    """A cluster whose daemon is reached directly at ``host:server_port`` (default: this machine).

    With ``ips`` (and ``ssh_creds``), a machine you bring, reached over SSH (see
    :class:`~runhouse.resources.clusters.ssh.SSHCluster` for its options); with several ips, a multi-node
    cluster on Ray, ``ips[0]`` its head (:class:`~runhouse.resources.clusters.ray.RayCluster`: also
    ``ray_port`` and ``node_resources``). Called with only a name, loads the cluster saved under it. Nothing
    connects until first use.

    Example::

        box = rh.cluster(name="box", host="localhost", server_port=32301).up_if_not()
        rh.cluster(name="box")   # the same cluster, once saved with box.save()
        pair = rh.cluster(name="pair", ips=["10.0.0.5", "10.0.0.6"], ssh_creds={"ssh_user": "ubuntu"})
    """
    unknown = sorted(set(ssh_options) - set(_OPTIONS))
    if unknown:
        raise TypeError(
            f"rh.cluster() got unexpected keyword arguments {unknown}; it takes name, host, server_port, token, "
            f"dryrun, ips, ssh_creds and {', '.join(_OPTIONS)}"
        )
    if "instance_type" in ssh_options or "num_instances" in ssh_options:
        if name is None:
            raise ValueError("an on-demand cluster (instance_type=...) needs a name: its machines are found by it")
        return ondemand_cluster(name=name, server_port=server_port, ips=ips, ssh_creds=ssh_creds, **ssh_options)
    if isinstance(ips, str):
        raise TypeError(f"ips is a list of addresses, like [{ips!r}], not a string")
    if ips and len(ips) > 1:
        from runhouse.resources.clusters.ray import RayCluster

        return RayCluster(name=name, ips=ips, ssh_creds=ssh_creds, server_port=server_port, token=token, **ssh_options)
    if ips:
        from runhouse.resources.clusters.ssh import SSHCluster

        return SSHCluster(name=name, ips=ips, ssh_creds=ssh_creds, server_port=server_port, token=token, **ssh_options)
    default_env = ssh_options.pop("default_env", None)
    den_auth = ssh_options.pop("den_auth", None)
    if ssh_creds or ssh_options:
        raise ValueError("ssh_creds and SSH options need ips=[...] (the hosts to reach over SSH)")
    if (name is not None and host is None and server_port is None and token is None and default_env is None
            and den_auth is None):
        from runhouse.resources.resource import load_typed

        return load_typed(Cluster, name, dryrun=dryrun)
    return DirectCluster(name=name, host=host or "localhost", server_port=server_port, token=token,
                         default_env=default_env, den_auth=False if den_auth is None else den_auth)


_here: dict[int, Cluster] = {}


def ondemand_cluster(name: str, num_instances: int = 1, **arguments: Any) -> Cluster:
    """A cluster of machines made on demand (SkyPilot: extra ``runhouse[sky]``), found by its name.

    Arguments: ``instance_type`` ("A10G:1", "m5.xlarge"), ``provider`` ("aws", "gcp", "kubernetes", ...;
    default ``rh.configs`` ``default_provider``), ``num_instances``, ``use_spot``, ``region``, ``image_id``
    ("docker:..." too), ``memory``, ``disk_size``, ``open_ports``, ``autostop_mins`` (default
    ``default_autostop``; -1 never). Nothing launches until first use.

    Example::

        gpu = rh.ondemand_cluster(name="rh-a10x", instance_type="A10G:1", provider="aws").up_if_not()
    """
    from runhouse.resources.clusters.ondemand import OnDemandCluster, OnDemandRayCluster

    kind = OnDemandRayCluster if isinstance(num_instances, int) and num_instances > 1 else OnDemandCluster
    return kind(name=name, num_instances=num_instances, **arguments)


def here() -> Cluster:
    """This machine's daemon (port ``$RH_SERVER_PORT``, default 32300), started on first use if not running."""
    port = default_server_port()
    if port not in _here:
        this_machine = DirectCluster(name="here", host="localhost", server_port=port)
        this_machine._starts_on_use = True
        _here[port] = this_machine
    return _here[port]
