"""On-demand clusters: machines a provisioner makes (SkyPilot by default), then brought up like your own.

``rh.ondemand_cluster(name=..., instance_type="A10G:1", provider="aws")`` (or ``rh.cluster(...,
instance_type=...)``) is an :class:`OnDemandCluster` (one machine: an SSH cluster) or an
:class:`OnDemandRayCluster` (``num_instances`` > 1: a multi-node cluster on Ray). First use asks the
provisioner (:mod:`runhouse.resources.clusters.provisioning`) for the machines under the cluster's name —
launching them, or starting them again when stopped — then does the SSH or Ray bring-up on the ips it gives.
The daemon's idle timer runs the provisioner's "stop my machines" command when the cluster idles for
``autostop_mins``; the provisioner's own autostop is set as a second line. ``teardown()`` deletes the machines;
the saved config stays, with the last ips and SSH login (a key's path, never the key), so ``rh.cluster(name)``
anywhere reconnects to the running machines without launching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runhouse.errors import ClusterUnreachableError, ConfigError, SSHConnectionError
from runhouse.paths import config_dir, write_atomic
from runhouse.protocol import LogSink
from runhouse.resources.clusters.base import CONTROL_TIMEOUT_S
from runhouse.resources.clusters.provisioning import (
    MACHINE_CREDS_KEYS,
    UP,
    LaunchRequest,
    Machines,
    Provisioner,
    provisioner,
)
from runhouse.resources.clusters.ray import RayCluster
from runhouse.resources.clusters.ssh import SSHCluster
from runhouse.resources.secret import configured_store
from runhouse.transport.client import ItemsSink, Response
from runhouse.transport.ssh import ssh_config

DEFAULT_PROVISIONER = "sky"
_PENDING = "pending-launch"


class _OnDemand(SSHCluster):
    """What on-demand clusters add to an SSH (or Ray) cluster: machines from a provisioner."""

    def __init__(
        self,
        name: str | None = None,
        instance_type: str | None = None,
        provider: str | None = None,
        num_instances: int = 1,
        use_spot: bool | None = None,
        region: str | None = None,
        image_id: str | None = None,
        memory: str | int | None = None,
        disk_size: int | None = None,
        open_ports: Sequence[int | str] | None = None,
        autostop_mins: float | None = None,
        provisioner: str = DEFAULT_PROVISIONER,
        cluster_name: str | None = None,
        ssh_key_secret: str | None = None,
        ips: Sequence[str] | None = None,
        ssh_creds: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        from runhouse.config import configs

        if not name:
            raise ValueError("an on-demand cluster needs a name: its machines are found by it")
        if isinstance(num_instances, bool) or not isinstance(num_instances, int) or num_instances < 1:
            raise ValueError(f"num_instances must be a whole number of machines, 1 or more, not {num_instances!r}")
        if autostop_mins is None:
            autostop_mins = configs.get("default_autostop")
        if autostop_mins is not None and (isinstance(autostop_mins, bool) or not isinstance(autostop_mins, (int, float))
                                          or math.isnan(autostop_mins)):
            raise ValueError(f"autostop_mins is a number of minutes (-1: never), not {autostop_mins!r}")
        self.launch_request = LaunchRequest(
            # The provisioner's name for the machines: the resource's own name without its folder, kept as it
            # was first made (a saved and reloaded cluster is named by its address).
            cluster_name=cluster_name or name.rstrip("/").rsplit("/", 1)[-1],
            instance_type=instance_type,
            provider=provider or configs.get("default_provider"),
            num_instances=num_instances,
            use_spot=bool(configs.get("use_spot") if use_spot is None else use_spot),
            region=region,
            image_id=image_id,
            memory=None if memory is None else str(memory),
            disk_size=disk_size,
            open_ports=tuple(open_ports or ()),
            autostop_mins=autostop_mins,
        )
        self.provisioner_name = provisioner
        known = list(ips or [])
        # Each relaunch may bring new machines (new host keys) at old addresses: a known_hosts file of the
        # cluster's own, started afresh at every launch, with new keys accepted (the provisioner made them).
        creds = {"known_hosts": str(config_dir() / "known_hosts" / self.launch_request.cluster_name),
                 **(ssh_creds or {})}
        options.setdefault("accept_new_host_keys", True)
        super().__init__(name=name, ips=known or [f"{_PENDING}-{i}" for i in range(max(num_instances, 1))],
                         ssh_creds=creds, autostop_mins=autostop_mins, **options)
        self._adopted = bool(known) and not known[0].startswith(_PENDING)
        self.ssh_key_secret = ssh_key_secret  # the secret (Den, Vault) holding the SSH key, once saved

    # --- machines ----------------------------------------------------------------------------------
    @property
    def provisioner(self) -> Provisioner:
        return provisioner(self.provisioner_name)

    def machines(self) -> Machines | None:
        """The cluster's machines as the provisioner sees them now (None: none under this name)."""
        assert self.name is not None
        return self.provisioner.status(self.launch_request.cluster_name)

    def _adopt(self, machines: Machines, fresh: bool) -> None:
        """Reach ``machines`` from now on (after a launch, ``fresh``: their host keys are new)."""
        self.close()
        self.ips = list(machines.ips)
        kept = {key: value for key, value in self.ssh_creds.items() if key not in MACHINE_CREDS_KEYS}
        self.ssh_creds = {**kept, **machines.ssh_creds()}
        self.creds = self._credentials()
        self._ssh = self._hosts = self._tunnel = None
        self._remote_state = None
        self._shipper = None
        self._pinned = None
        self._forget_nodes()
        if fresh and self.creds.known_hosts:
            known_hosts = config_dir() / "known_hosts"
            known_hosts.mkdir(parents=True, exist_ok=True, mode=0o700)
            (known_hosts / self.creds.known_hosts.rsplit("/", 1)[-1]).unlink(missing_ok=True)
        self._adopted = True

    def _forget_nodes(self) -> None:
        """Forget what was learned about the old machines (kinds with several nodes forget more)."""

    def save(self, name: str | None = None) -> _OnDemand:
        """Save the config. With a secret store (logged in to Den, or Vault), the SSH key goes there as a secret
        and the config names it (never the key itself): another machine of the same account fetches it."""
        key = self.ssh_creds.get("ssh_private_key")
        store = configured_store()
        if key and store is not None and Path(key).expanduser().is_file():
            secret = f"ssh-key-{self.launch_request.cluster_name}"
            store.put(secret, "ssh", {"private_key": Path(key).expanduser().read_text()})
            self.ssh_key_secret = secret
        super().save(name)
        return self

    def _fetch_key(self) -> None:
        """When the SSH key is not on this machine but saved as a secret, keep a copy of it here (0600)."""
        key = self.ssh_creds.get("ssh_private_key")
        if not self.ssh_key_secret or (key and Path(key).expanduser().is_file()):
            return
        store = configured_store()
        if store is None:
            raise ConfigError(f"the SSH key of cluster {self.name} is the secret {self.ssh_key_secret!r}: log in "
                              "to Den (rh.login) to fetch it, or give ssh_creds={'ssh_private_key': ...}")
        _, values = store.get(self.ssh_key_secret)
        folder = config_dir() / "keys"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / self.launch_request.cluster_name
        write_atomic(path, values["private_key"])
        self.ssh_creds = {**self.ssh_creds, "ssh_private_key": str(path)}
        self.creds = self._credentials()
        self._ssh = self._hosts = None

    def _ensure_up(self, start: bool = False) -> None:
        """Find the machines (launching them, or starting them when stopped, if this may start the cluster),
        then bring the daemon up as on any SSH cluster."""
        if not self._checked_up:
            self._fetch_key()
            machines = self.machines()
            if machines is None or machines.state != UP:
                if not (start or self._starts_on_use):
                    raise ClusterUnreachableError(f"on-demand cluster {self.name} is not up; up_if_not() launches it")
                machines = self.provisioner.launch(self.launch_request)
                self._adopt(machines, fresh=True)
            elif not self._adopted or list(machines.ips) != self.ips:
                self._adopt(machines, fresh=False)
        super()._ensure_up(start)

    def request(self, path: str, meta: dict[str, Any] | None = None, parts: Sequence[Any] = (),
                on_log: LogSink | None = None, timeout: float = CONTROL_TIMEOUT_S,
                on_items: ItemsSink | None = None) -> Response:
        """As an SSH cluster's; when its machines cannot be reached because they stopped (autostop) or moved,
        they are found or launched again first (the request was never sent)."""
        try:
            return super().request(path, meta, parts, on_log, timeout, on_items)
        except SSHConnectionError:
            machines = self.machines()
            if machines is not None and machines.state == UP and list(machines.ips) == self.ips:
                raise
        self.close()
        self._ensure_up()
        return super().request(path, meta, parts, on_log, timeout, on_items)

    def _after_start(self) -> None:
        """The daemon's stop action is the provisioner's "stop these machines"; while in use the daemon keeps
        the provisioner's own autostop from firing."""
        name = self.launch_request.cluster_name
        self._set_autostop(self.autostop_mins, self.provisioner.self_stop_command(name),
                           self.provisioner.keepalive_command(name), set_commands=True)

    def is_up(self) -> bool:
        machines = self.machines()
        if machines is None or machines.state != UP:
            return False
        if not self._adopted or list(machines.ips) != self.ips:
            self._adopt(machines, fresh=False)
        return super().is_up()

    def status(self) -> dict[str, Any]:
        """The machines' state and ips; with the daemon's status when they are up (nothing is launched)."""
        machines = self.machines()
        state = {"state": machines.state if machines else None, "ips": list(machines.ips) if machines else []}
        if machines is None or machines.state != UP or not self.is_up():
            return state
        return {**super().status(), **state}

    def keep_warm(self, autostop_mins: float = -1) -> _OnDemand:
        """Set the idle timer (see :meth:`Cluster.keep_warm`) and the provisioner's own autostop to match."""
        super().keep_warm(autostop_mins)
        self.autostop_mins = autostop_mins
        self.provisioner.set_autostop(self.launch_request.cluster_name, autostop_mins)
        return self

    def teardown(self) -> None:
        """Delete the machines (the saved config stays; the next use launches new ones)."""
        try:
            self.provisioner.down(self.launch_request.cluster_name)
            ssh_config.unregister_cluster(self.name)
        finally:
            self.close()
            self._adopted = False

    def stop(self) -> None:
        """Stop the machines, keeping their disks; the next use starts them again."""
        try:
            self.provisioner.stop(self.launch_request.cluster_name)
        finally:
            self.close()

    # --- config ------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        request = self.launch_request
        return {
            **super().config(),
            "instance_type": request.instance_type,
            "provider": request.provider,
            "num_instances": request.num_instances,
            "use_spot": request.use_spot,
            "region": request.region,
            "image_id": request.image_id,
            "memory": request.memory,
            "disk_size": request.disk_size,
            "open_ports": list(request.open_ports),
            "provisioner": self.provisioner_name,
            "cluster_name": request.cluster_name,
            "ssh_key_secret": self.ssh_key_secret,
        }

    @classmethod
    def _arguments_from_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        arguments = super()._arguments_from_config(config)
        fields = ("instance_type", "provider", "num_instances", "use_spot", "region", "image_id", "memory",
                  "disk_size", "open_ports", "provisioner", "cluster_name", "ssh_key_secret")
        return {**arguments, **{key: config[key] for key in fields if key in config}}


class OnDemandCluster(_OnDemand):
    """One machine from a provisioner (SkyPilot by default), brought up as an SSH cluster.

    Example::

        gpu = rh.ondemand_cluster(name="rh-a10x", instance_type="A10G:1", provider="aws").up_if_not()
        gpu.keep_warm(autostop_mins=60); gpu.teardown()
    """


class OnDemandRayCluster(_OnDemand, RayCluster):  # type: ignore[misc]
    """Several machines from a provisioner, brought up as one cluster on Ray (``num_instances`` > 1)."""

    def _forget_nodes(self) -> None:
        self._node_states.clear()
        self._shippers.clear()

