"""SkyPilot as the provisioner of on-demand clusters (extra ``runhouse[sky]``; SkyPilot 0.14's client SDK).

SkyPilot is imported on first use, never by ``import runhouse``. Its SDK talks to an API server: a remote one
(``sky api login``) or a local one that the first call starts on this machine (slow, a large process). So that a
machine without cloud credentials learns that in seconds rather than after starting one, and without touching a
server at all:

- :meth:`SkyProvisioner.launch` first reads SkyPilot's cached enabled clouds (the result of the last
  ``sky check``, in SkyPilot's local state) when the API server is the local one, and refuses with
  "... run `sky check`" when the requested cloud (or, for "cheapest", any cloud) is not among them;
- :meth:`~SkyProvisioner.status`, :meth:`~SkyProvisioner.stop` and :meth:`~SkyProvisioner.down` answer "no such
  cluster" from the same local state, when the server is local and it holds no cluster of that name.

A remote API server keeps its own state, so with one every call goes to it.

How :class:`~runhouse.resources.clusters.provisioning.LaunchRequest` maps onto SkyPilot is :meth:`task_for`;
whether ``instance_type`` names accelerators or a cloud's instance type is :func:`looks_like_accelerators`.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import shlex
from typing import Any

from runhouse.errors import ProvisioningError
from runhouse.resources.clusters.provisioning import INIT, STOPPED, UP, LaunchRequest, Machines, Provisioner

INSTALL_HINT = 'on-demand clusters need SkyPilot: pip install "runhouse[sky]"'

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _sky() -> Any:
    """The ``sky`` module, imported now; a missing SkyPilot is a one-line :class:`ProvisioningError`."""
    try:
        return importlib.import_module("sky")
    except ModuleNotFoundError as error:
        if error.name not in ("sky", None):  # SkyPilot is there but one of its own imports is not
            raise ProvisioningError(f"SkyPilot is installed but cannot be imported: {_one_line(error)}") from error
        raise ProvisioningError(INSTALL_HINT) from None


def _exceptions() -> Any:
    return importlib.import_module("sky.exceptions")


def _one_line(error: BaseException) -> str:
    """An exception as one line: its type and the first non-empty line of its message, without colours."""
    text = _ANSI.sub("", str(error))
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > 300:
        first = first[:297] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def looks_like_accelerators(instance_type: str) -> bool:
    """Whether ``instance_type`` names accelerators (SkyPilot's ``accelerators=``) rather than an instance type.

    Accelerators when it has a count (``"A10G:1"``, ``"a100:8"``, ``"T4:0.5"``), is a TPU (``"tpu-v4-8"``), or
    is written in capitals and digits, maybe with single dashes, without ``.`` or ``_`` (``"H100"``, ``"L4"``,
    ``"A100-80GB"``). Anything else is a cloud's instance type: ``"m5.xlarge"``, ``"n1-standard-4"``,
    ``"Standard_NC6s_v3"``, ``"gpu_1x_a10"``, ``"4CPU--16GB"`` (Kubernetes). A capitalised instance type of
    some smaller clouds (Paperspace's ``"P4000"``) reads as an accelerator; a lower-case accelerator without
    a count (``"a10g"``) reads as an instance type: write ``"A10G"`` or ``"a10g:1"``.
    """
    value = instance_type.strip()
    if ":" in value or value.lower().startswith("tpu-"):
        return True
    return (
        any(c.isalpha() for c in value)
        and value == value.upper()
        and "." not in value
        and "_" not in value
        and "--" not in value
    )


def _autostop_minutes(minutes: float | None) -> int:
    """Whole minutes for SkyPilot's autostop, rounded up; -1 (off, SkyPilot cancels autostop) for None/negative."""
    if minutes is None or minutes < 0:
        return -1
    return math.ceil(minutes)


# SkyPilot's name for the backend of VM clusters (``CloudVmRayBackend.NAME``), which its skylet stops them with.
_SKY_BACKEND = "cloudvmray"


class SkyProvisioner(Provisioner):
    """Launches, finds, stops and deletes on-demand clusters with SkyPilot; the cluster name is SkyPilot's."""

    name = "sky"

    # ------------------------------------------------------------------ the task

    def task_for(self, request: LaunchRequest) -> Any:
        """The ``sky.Task`` (one task, no commands: launching it only makes the machines) for ``request``.

        - ``instance_type``: accelerators or an instance type, see :func:`looks_like_accelerators`;
        - ``provider``: None or ``"cheapest"``: no ``infra`` (SkyPilot picks the cheapest enabled cloud, in
          ``region`` when given: ``"*/<region>"``); ``"kubernetes"``/``"k8s"``: ``"kubernetes"`` (``region`` is
          the kube context); another cloud: ``"<cloud>"`` or ``"<cloud>/<region>"``;
        - ``num_instances`` -> ``num_nodes``; ``use_spot``, ``image_id`` (also ``"docker:<image>"``), ``memory``,
          ``disk_size`` as they are; ``open_ports`` -> ``ports``.

        Raises:
            ProvisioningError: a value SkyPilot does not accept (one line saying which and why), or SkyPilot is
                not installed. Building the task needs no network; serialising one that names both a cloud and an
                instance type (without ``memory``) makes SkyPilot fetch its instance catalog (from GitHub, cached).
        """
        sky = _sky()
        name = request.cluster_name
        if request.num_instances < 1:
            raise ProvisioningError(f"num_instances must be at least 1, not {request.num_instances} ({name!r})")
        if request.disk_size is not None and request.disk_size < 1:
            raise ProvisioningError(f"disk_size must be a positive number of GiB, not {request.disk_size} ({name!r})")
        common_utils = importlib.import_module("sky.utils.common_utils")
        try:
            common_utils.check_cluster_name_is_valid(name)
        except Exception as error:
            raise ProvisioningError(
                f"SkyPilot does not accept the cluster name {name!r}: {_one_line(error)}"
            ) from error
        kwargs: dict[str, Any] = {"infra": self._infra(sky, request.provider, request.region)}
        if request.instance_type:
            key = "accelerators" if looks_like_accelerators(request.instance_type) else "instance_type"
            kwargs[key] = request.instance_type.strip()
        kwargs.update(
            use_spot=request.use_spot,
            image_id=request.image_id or None,
            memory=request.memory or None,
            disk_size=request.disk_size,
            ports=[str(port) for port in request.open_ports] or None,
        )
        try:
            resources = sky.Resources(**kwargs)
            task = sky.Task(name=name, num_nodes=request.num_instances)
            task.set_resources(resources)
        except Exception as error:
            raise ProvisioningError(f"SkyPilot does not accept cluster {name!r}: {_one_line(error)}") from error
        return task

    @staticmethod
    def _check_serialisable(task: Any, name: str) -> None:
        """Serialise the task as ``sky.launch`` will, first: with a cloud and an instance type (and no memory),
        SkyPilot looks the instance type up in its catalog, fetched from GitHub (cached for hours)."""
        try:
            task.to_yaml_config()
        except (ValueError, TypeError, AssertionError) as error:
            raise ProvisioningError(f"SkyPilot does not accept cluster {name!r}: {_one_line(error)}") from error
        except Exception as error:
            raise ProvisioningError(
                f"SkyPilot could not check cluster {name!r} against its instance catalog: {_one_line(error)}"
            ) from error

    @staticmethod
    def _infra(sky: Any, provider: str | None, region: str | None) -> str | None:
        cloud = (provider or "").strip().lower()
        region = (region or "").strip() or None
        if cloud in ("", "cheapest"):
            return f"*/{region}" if region else None
        if cloud in ("kubernetes", "k8s"):
            cloud = "kubernetes"
        else:
            SkyProvisioner._cloud(sky, cloud)  # an unknown name is a one-line error
        return f"{cloud}/{region}" if region else cloud

    @staticmethod
    def _cloud(sky: Any, provider: str | None) -> Any:
        """SkyPilot's cloud object for ``provider`` (None for None/"cheapest")."""
        name = (provider or "").strip().lower()
        if name in ("", "cheapest"):
            return None
        try:
            return sky.CLOUD_REGISTRY.from_str(name)
        except ValueError:
            known = sorted(set(sky.CLOUD_REGISTRY) | {"k8s", "cheapest"})
            raise ProvisioningError(f"SkyPilot knows no cloud {provider!r}; use one of: {', '.join(known)}") from None

    # ------------------------------------------------------------------ local state (local API server only)

    @staticmethod
    def _local_state() -> Any:
        """SkyPilot's state module when its API server is the local one (which shares it); else None."""
        common = importlib.import_module("sky.server.common")
        if not common.is_api_server_local(common.get_server_url()):
            return None
        return importlib.import_module("sky.global_user_state")

    def _check_enabled_cloud(self, sky: Any, provider: str | None) -> None:
        wanted = self._cloud(sky, provider)
        state = self._local_state()
        if state is None:
            return  # a remote API server checks its own clouds
        capability = importlib.import_module("sky.clouds.cloud").CloudCapability.COMPUTE
        workspace = importlib.import_module("sky.skypilot_config").get_active_workspace()
        try:
            enabled = state.get_cached_enabled_clouds(capability, workspace)
        except Exception as error:
            raise ProvisioningError(f"cannot read SkyPilot's enabled clouds: {_one_line(error)}") from error
        if wanted is None and enabled:
            return
        if wanted is not None and any(wanted.is_same_cloud(cloud) for cloud in enabled):
            return
        which = f" (for {str(provider).strip().lower()})" if wanted is not None else ""
        raise ProvisioningError(f"SkyPilot has no enabled cloud{which}: set up credentials and run `sky check`")

    def _surely_absent(self, cluster_name: str) -> bool:
        """True when the local API server's state holds no cluster of that name (no server is needed)."""
        state = self._local_state()
        if state is None:
            return False
        try:
            return not state.cluster_with_name_exists(cluster_name)
        except Exception:
            return False  # unreadable: let the API server answer

    # ------------------------------------------------------------------ the lifecycle

    def launch(self, request: LaunchRequest) -> Machines:
        sky = _sky()
        name = request.cluster_name
        self._check_enabled_cloud(sky, request.provider)
        task = self.task_for(request)
        self._check_serialisable(task, name)
        idle = _autostop_minutes(request.autostop_mins)
        try:
            sky.get(
                sky.launch(
                    task,
                    cluster_name=name,
                    retry_until_up=False,
                    idle_minutes_to_autostop=idle if idle >= 0 else None,
                    down=False,
                )
            )
        except Exception as error:
            raise self._error(error, f"SkyPilot could not launch cluster {name!r}") from error
        machines = self.status(name)
        if machines is None:
            raise ProvisioningError(f"SkyPilot launched cluster {name!r} but then did not list it (`sky status`)")
        return machines

    def status(self, cluster_name: str) -> Machines | None:
        sky = _sky()
        if self._surely_absent(cluster_name):
            return None
        refresh = importlib.import_module("sky.utils.common").StatusRefreshMode.AUTO
        try:
            # Credentials: the SSH user and key, as `sky status` gets them to write ~/.ssh/config.
            records = sky.get(sky.status([cluster_name], refresh=refresh, _include_credentials=True))
        except Exception as error:
            if isinstance(error, _exceptions().ClusterDoesNotExist):
                return None
            raise self._error(error, f"SkyPilot could not get the status of cluster {cluster_name!r}") from error
        record = next((r for r in records or () if _get(r, "name") == cluster_name), None)
        return None if record is None else self._machines(cluster_name, record)

    def stop(self, cluster_name: str) -> None:
        self._stop_or_down("stop", cluster_name)

    def down(self, cluster_name: str) -> None:
        self._stop_or_down("down", cluster_name)

    def _stop_or_down(self, action: str, cluster_name: str) -> None:
        sky = _sky()
        if self._surely_absent(cluster_name):
            return
        try:
            sky.get(getattr(sky, action)(cluster_name))
        except Exception as error:
            if isinstance(error, _exceptions().ClusterDoesNotExist):
                return
            raise self._error(error, f"SkyPilot could not {action} cluster {cluster_name!r}") from error

    def set_autostop(self, cluster_name: str, idle_minutes: float | None, down: bool = False) -> None:
        """SkyPilot's autostop: whole minutes, rounded up; -1 (None or negative) cancels it. Turning it off on a
        cluster that does not exist does nothing; setting it there is an error."""
        sky = _sky()
        minutes = _autostop_minutes(idle_minutes)
        what = f"SkyPilot could not set autostop of cluster {cluster_name!r}"
        if self._surely_absent(cluster_name):
            if minutes < 0:
                return
            raise ProvisioningError(f"{what}: no such cluster (`sky status`)")
        try:
            sky.get(sky.autostop(cluster_name, idle_minutes=minutes, down=down))
        except Exception as error:
            if minutes < 0 and isinstance(error, _exceptions().ClusterDoesNotExist):
                return
            raise self._error(error, what) from error

    def self_stop_command(self, cluster_name: str, down: bool = False) -> str | None:
        """Run on the head: SkyPilot's own command (its autostop code generator) setting the head's skylet to
        stop (or delete) the cluster at its next check, with the head's own cloud credentials."""
        _sky()
        from sky.skylet import autostop_lib

        return str(autostop_lib.AutostopCodeGen.set_autostop(0, _SKY_BACKEND, autostop_lib.AutostopWaitFor.NONE, down))

    def keepalive_command(self, cluster_name: str) -> str | None:
        """Run on the head while runhouse works: marks the cluster active for SkyPilot's autostop, which
        otherwise counts only SkyPilot's jobs and SSH sessions."""
        _sky()
        from sky.skylet import constants

        code = "from sky.skylet import autostop_lib; autostop_lib.set_last_active_time_to_now()"
        return f"{constants.SKY_PYTHON_CMD} -u -c {shlex.quote(code)}"

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _error(error: Exception, what: str) -> ProvisioningError:
        """A one-line ProvisioningError for a SkyPilot failure (raise it ``from`` the original)."""
        exceptions = _exceptions()
        if isinstance(error, exceptions.NoCloudAccessError):
            return ProvisioningError(f"{what}: SkyPilot has no enabled cloud: set up credentials and run `sky check`")
        if isinstance(error, exceptions.ApiServerConnectionError):
            return ProvisioningError(
                f"{what}: cannot reach the SkyPilot API server (`sky api info`): {_one_line(error)}"
            )
        return ProvisioningError(f"{what}: {_one_line(error)}")

    def _machines(self, cluster_name: str, record: Any) -> Machines:
        status = _get(record, "status")
        status_name = getattr(status, "value", status)
        state = {"UP": UP, "STOPPED": STOPPED}.get(str(status_name), INIT)  # INIT, AUTOSTOPPING, PENDING: INIT
        handle = _get(record, "handle")
        ips: list[str] = []
        internal: list[str] = []
        ssh_ports: list[int] = []
        if handle is not None and state != STOPPED:  # a stopped cluster's addresses change when it starts
            ips = list(getattr(handle, "cached_external_ips", None) or [])
            internal = list(getattr(handle, "cached_internal_ips", None) or [])
            ssh_ports = list(getattr(handle, "cached_external_ssh_ports", None) or [])
        credentials = dict(_get(record, "credentials") or {})
        ssh_user = credentials.get("ssh_user") or (getattr(handle, "ssh_user", None) if handle is not None else None)
        details: dict[str, Any] = {
            "sky_status": str(status_name),
            "cloud": _get(record, "cloud"),
            "region": _get(record, "region"),
            "resources": _get(record, "resources_str"),
            "autostop": _get(record, "autostop"),
            "to_down": _get(record, "to_down"),
        }
        if internal:
            details["internal_ips"] = internal
        if len(set(ssh_ports)) > 1:
            details["ssh_ports"] = ssh_ports
        docker_user = getattr(handle, "docker_user", None) if handle is not None else None
        if docker_user:  # the machines answer SSH on the host; the container is behind it (SkyPilot's proxy)
            details["docker_user"] = docker_user
        return Machines(
            state=state,
            ips=tuple(ips),
            ssh_user=ssh_user,
            ssh_private_key=self._private_key(cluster_name, credentials),
            ssh_port=int(ssh_ports[0]) if ssh_ports else 22,
            ssh_proxy_command=credentials.get("ssh_proxy_command") or None,
            details={k: v for k, v in details.items() if v is not None},
        )

    @staticmethod
    def _private_key(cluster_name: str, credentials: dict[str, Any]) -> str | None:
        """A path on this machine to the cluster's SSH key.

        The API server sends the key itself (``ssh_private_key_content``); SkyPilot's own client writes it to
        ``~/.sky/generated/ssh-keys/<cluster>.key`` (``SSHConfigHelper.generate_local_key_file``), as here. Without
        it: the server's path (the same machine's, for a local server), else this user's SkyPilot key
        ``~/.sky/clients/<user hash>/ssh/sky-key`` when it exists.
        """
        if credentials.get("ssh_private_key_content"):
            helper = importlib.import_module("sky.utils.cluster_utils").SSHConfigHelper
            return os.path.expanduser(helper.generate_local_key_file(cluster_name, dict(credentials)))
        if credentials.get("ssh_private_key"):
            return os.path.expanduser(credentials["ssh_private_key"])
        try:
            auth_utils = importlib.import_module("sky.utils.auth_utils")
            user_hash = importlib.import_module("sky.utils.common_utils").get_user_hash()
            path = os.path.expanduser(auth_utils.get_ssh_key_and_lock_path(user_hash)[0])
        except Exception:
            return None
        return path if os.path.exists(path) else None


def _get(record: Any, key: str) -> Any:
    """A field of a status record: SkyPilot's StatusResponse (dict-like) or a plain dict."""
    if isinstance(record, dict):
        return record.get(key)
    return getattr(record, key, None)
