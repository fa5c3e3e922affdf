"""A daemon reached directly at a host and port: this machine's (``rh.here``), or one already running elsewhere."""

from __future__ import annotations

import getpass
import socket
from typing import TYPE_CHECKING, Any

from runhouse.errors import ClusterUnreachableError, RunhouseError
from runhouse.paths import config_dir_id
from runhouse.resources.clusters import local_daemon
from runhouse.resources.clusters.base import Cluster
from runhouse.resources.env import Env

if TYPE_CHECKING:
    from runhouse.resources.data.base import DataSystem


class DirectCluster(Cluster):
    """A daemon at ``host:server_port`` reached without SSH.

    :meth:`up_if_not` starts one on this machine when it is not running; other operations never do (except
    on ``rh.here``): they raise :class:`~runhouse.errors.ClusterUnreachableError` saying how to start it.

    Example::

        box = rh.cluster(name="box", host="localhost", server_port=32301).up_if_not()
        box.put("k", [1, 2]); box.get("k")
    """

    def __init__(
        self,
        name: str | None = None,
        host: str = "localhost",
        server_port: int | None = None,
        token: str | None = None,
        default_env: Env | str | None = None,
        den_auth: bool = False,
    ) -> None:
        super().__init__(name=name, server_port=server_port, token=token, default_env=default_env,
                         den_auth=den_auth)
        self._host = host
        self._machine: dict[str, Any] | None = None  # whose "localhost" a loaded config meant (see _foreign)

    @property
    def host(self) -> str:
        return self._host

    def _endpoint(self) -> tuple[str, int]:
        foreign = self._foreign()
        if foreign is not None:
            raise ClusterUnreachableError(foreign)
        return self._host, self.server_port

    def _foreign(self) -> str | None:
        """Why this cluster cannot be reached from here when its config was saved on another machine (or
        runhouse folder) and names that one's own daemon as ``localhost``; None when it is this one's."""
        machine = self._machine
        if not machine or not self.is_local or machine.get("id") == config_dir_id():
            return None
        if self.den_auth and machine.get("host") == socket.gethostname():
            return None  # another runhouse folder on this machine: its daemon takes this user's Den token
        label = self.rns_address or self.name or "this cluster"
        return (
            f"{label} is the local daemon of {machine.get('user', '?')}@{machine.get('host', '?')} (its port "
            f"{self.server_port}), not of this machine: it cannot be reached from here. Ask its owner to deploy "
            "to a cluster others can reach (an SSH or on-demand cluster), or deploy your own copy, e.g. "
            "rh.function(fn).to(rh.here)"
        )

    def _read_token(self) -> str | None:
        """This machine's daemon's token file; a remote daemon's token must be given as ``token=``."""
        return local_daemon.read_token(self.server_port) if self.is_local else None

    def _start_daemon(self) -> None:
        if not self.is_local:
            raise ClusterUnreachableError(
                f"no runhouse daemon answers at {self._host}:{self.server_port}, and it cannot be started from "
                f"here: start it on {self._host} with `runhouse start --port {self.server_port}`"
            )
        local_daemon.start(self.server_port)

    def _accept_running(self, answer: dict[str, Any]) -> None:
        """A daemon of this machine is used only if it is this config folder's, unless a token was given."""
        if not self.is_local or self._token is not None or self.den_auth:
            return  # a Den-auth daemon takes this user's Den token, whichever runhouse folder started it
        taken = local_daemon.other_daemon(self.server_port, answer)
        if taken is not None:  # its token is not in this config folder: every request would be refused
            raise ClusterUnreachableError(taken)

    def _not_running(self) -> ClusterUnreachableError:
        if not self.is_local:
            return super()._not_running()
        port = self.server_port
        message = (
            f"no runhouse daemon answers at {self._host}:{port}; start it with `runhouse start --port {port}` "
            "or with `.up_if_not()` on this cluster"
        )
        taken = local_daemon.port_in_use(port)
        return ClusterUnreachableError(f"{message} ({taken})" if taken else message)

    def _stop_daemon(self) -> None:
        if not self.is_local:
            raise RunhouseError(f"cannot stop the daemon at {self._host}: it is not on this machine")
        local_daemon.stop(self.server_port)

    def data_system(self) -> DataSystem:
        """The cluster's disk through its daemon (a daemon on this machine shares this disk)."""
        from runhouse.resources.data.daemon import DaemonSystem

        return DaemonSystem(self)

    def config(self) -> dict[str, Any]:
        config = {**super().config(), "host": self._host}
        if self.is_local:  # "localhost" means the saver's machine: say whose, for readers elsewhere
            config["machine"] = self._machine or {
                "id": config_dir_id(), "host": socket.gethostname(), "user": getpass.getuser()}
        return config

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> DirectCluster:
        cluster = cls(name=config.get("name"), host=config["host"], server_port=config["server_port"],
                      default_env=config.get("default_env"), den_auth=config.get("den_auth") is True)
        machine = config.get("machine")
        cluster._machine = machine if isinstance(machine, dict) else None
        return cluster

    def __repr__(self) -> str:
        return f"<Cluster {self.rns_address or self.name!r} at {self._host}:{self.server_port}>"
