"""The SkyPilot provisioner: the sky.Task it builds, the SkyPilot calls it makes, and how it fails without SkyPilot
or without a cloud. SkyPilot's own SDK calls need an API server and a cloud account, so those are replaced by
recorders here (``sky.launch``/``get``/``status``/``stop``/``down``/``autostop``); everything else is SkyPilot's."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runhouse.errors import ProvisioningError
from runhouse.resources.clusters import provisioning
from runhouse.resources.clusters.provisioning import INIT, STOPPED, UP, LaunchRequest, Machines
from runhouse.resources.clusters.sky import INSTALL_HINT, SkyProvisioner, looks_like_accelerators

# SkyPilot reads these; none of them may point at the real ~/.sky or a real API server.
_SKY_ENV = (
    "SKYPILOT_API_SERVER_ENDPOINT",
    "SKYPILOT_CONFIG",
    "SKYPILOT_GLOBAL_CONFIG",
    "SKYPILOT_PROJECT_CONFIG",
    "SKY_RUNTIME_DIR",
    "SKYPILOT_API_SERVER_LOCAL_PORT",
)
REMOTE_API_SERVER = "http://sky-api.invalid:46580"  # never contacted: every SDK call is a recorder


@pytest.fixture(scope="module")
def sky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """SkyPilot, imported with HOME in a temporary folder (importing it writes ~/.sky); skips without it."""
    home = tmp_path_factory.mktemp("skyhome")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        for name in _SKY_ENV:
            patch.delenv(name, raising=False)
        yield pytest.importorskip("sky")


@pytest.fixture
def home(sky: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


class FakeSky:
    """Records SkyPilot's SDK calls; ``sky.get(request_id)`` answers ``results[<call>]`` (raised when an error)."""

    def __init__(self, sky: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.results: dict[str, Any] = {"launch": (1, None), "status": []}
        for name in ("launch", "status", "stop", "down", "autostop"):
            monkeypatch.setattr(sky, name, self._recorder(name))
        monkeypatch.setattr(sky, "get", self._get)

    def _recorder(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> str:
            self.calls.append((name, args, kwargs))
            return f"request/{name}/{len(self.calls)}"

        return record

    def _get(self, request_id: str) -> Any:
        self.calls.append(("get", (request_id,), {}))
        result = self.results.get(request_id.split("/")[1])
        if isinstance(result, BaseException):
            raise result
        return result

    def named(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(args, kwargs) for call, args, kwargs in self.calls if call == name]


@pytest.fixture
def api_server(sky: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str | None], None]]:
    """``api_server(url)``: the API server address SkyPilot sees (None: the local one). SkyPilot caches the
    address for the process, so the cache is cleared on each change and afterwards."""
    from sky.server import common

    def use(url: str | None) -> None:
        if url is None:
            monkeypatch.delenv("SKYPILOT_API_SERVER_ENDPOINT", raising=False)
        else:
            monkeypatch.setenv("SKYPILOT_API_SERVER_ENDPOINT", url)
        common.get_server_url.cache_clear()

    yield use
    common.get_server_url.cache_clear()


@pytest.fixture
def fake(sky: Any, home: Path, api_server: Callable[[str | None], None], monkeypatch: pytest.MonkeyPatch) -> FakeSky:
    """Recorders in place of SkyPilot's SDK calls, and a remote API server address, so no local state is read."""
    api_server(REMOTE_API_SERVER)
    return FakeSky(sky, monkeypatch)


def yaml_resources(task: Any) -> dict[str, Any]:
    return task.to_yaml_config()["resources"]


def one_resources(task: Any) -> Any:
    (resources,) = task.resources
    return resources


# ---------------------------------------------------------------------------------------------------- the task

TABLE = [
    pytest.param(
        LaunchRequest("gpu", instance_type="A10G:1", provider="aws"),
        {"infra": "aws", "accelerators": {"A10G": 1}, "use_spot": False},
        1,
        id="aws-A10G",
    ),
    pytest.param(
        LaunchRequest(
            "cpu",
            instance_type="n1-standard-4",
            provider="gcp",
            region="us-central1",
            use_spot=True,
            image_id="docker:ubuntu:22.04",
            disk_size=100,
            memory="16+",
            open_ports=(8080, "9000-9010"),
        ),
        {
            "infra": "gcp/us-central1",
            "instance_type": "n1-standard-4",
            "use_spot": True,
            "image_id": {"us-central1": "docker:ubuntu:22.04"},
            "disk_size": 100,
            "memory": "16+",
            "ports": ["8080", "9000-9010"],
        },
        1,
        id="gcp-region-spot-docker-disk-memory-ports",
    ),
    pytest.param(
        LaunchRequest("kube", instance_type="H100:2", provider="kubernetes"),
        {"infra": "kubernetes", "accelerators": {"H100": 2}, "use_spot": False},
        1,
        id="kubernetes-H100",
    ),
    pytest.param(
        LaunchRequest("kctx", instance_type="L4", provider="k8s", region="my-context"),
        {"infra": "kubernetes/my-context", "accelerators": {"L4": 1}, "use_spot": False},
        1,
        id="k8s-alias-with-context",
    ),
    pytest.param(
        LaunchRequest("cheap", instance_type="m5.xlarge", provider="cheapest"),
        {"instance_type": "m5.xlarge", "use_spot": False},
        1,
        id="cheapest-m5.xlarge",
    ),
    pytest.param(
        LaunchRequest("three", instance_type="A100-80GB:8", provider=None, num_instances=3),
        {"accelerators": {"A100-80GB": 8}, "use_spot": False},
        3,
        id="no-provider-3-nodes",
    ),
    pytest.param(
        LaunchRequest("anywhere", provider=None, region="us-east-1"),
        {"infra": "*/us-east-1", "use_spot": False},
        1,
        id="cheapest-in-a-region",
    ),
]


@pytest.mark.parametrize(("request_", "expected", "num_nodes"), TABLE)
def test_task_for_builds_what_was_asked_and_round_trips(
    sky: Any, request_: LaunchRequest, expected: dict[str, Any], num_nodes: int
) -> None:
    task = SkyProvisioner().task_for(request_)
    assert isinstance(task, sky.Task)
    config = task.to_yaml_config()
    assert config["name"] == request_.cluster_name
    assert config["num_nodes"] == num_nodes == task.num_nodes
    assert config["resources"] == expected
    assert not task.run and not task.setup  # launching it only makes the machines

    # SkyPilot reads its own YAML back to the same task (from_yaml_config consumes the dict it gets; a task
    # read from YAML also keeps that YAML's text, which is not a field).
    again = sky.Task.from_yaml_config(copy.deepcopy(config)).to_yaml_config()
    again.pop("_user_specified_yaml", None)
    assert again == config

    resources = one_resources(task)
    assert resources.use_spot is request_.use_spot
    if request_.disk_size:
        assert resources.disk_size == request_.disk_size
    assert resources.ports == (expected.get("ports") or None)
    if "instance_type" in expected:
        assert resources.instance_type == expected["instance_type"]
    if "accelerators" in expected:
        assert resources.accelerators == expected["accelerators"]
    cloud = expected.get("infra", "*").split("/")[0]
    if cloud == "*":
        assert resources.cloud is None
    else:
        assert resources.cloud.is_same_cloud(sky.CLOUD_REGISTRY.from_str(cloud))
    if request_.region:
        assert resources.region == request_.region
    if request_.image_id:
        assert resources.image_id == expected["image_id"]


@pytest.mark.parametrize(
    ("value", "accelerators"),
    [
        ("A10G:1", True),
        ("a100:8", True),
        ("T4:0.5", True),
        ("H100", True),
        ("L4", True),
        ("A100-80GB", True),
        ("tpu-v4-8", True),
        ("m5.xlarge", False),
        ("n1-standard-4", False),
        ("Standard_NC6s_v3", False),
        ("gpu_1x_a10", False),
        ("4CPU--16GB", False),
        ("VM.GPU2.1", False),
        ("a10g", False),
    ],
)
def test_instance_type_is_accelerators_or_a_cloud_instance_type(value: str, accelerators: bool) -> None:
    assert looks_like_accelerators(value) is accelerators


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (LaunchRequest("x", num_instances=0), "num_instances"),
        (LaunchRequest("x", disk_size=0), "disk_size"),
        (LaunchRequest("x", provider="nocloud"), "knows no cloud 'nocloud'; use one of: aws"),
        (LaunchRequest("x", provider="amazon", region="us-east-1"), "knows no cloud 'amazon'"),
        (LaunchRequest("x", instance_type="A10G:x", provider="aws"), "accelerators"),
        (LaunchRequest("x", memory="lots"), "memory"),
        (LaunchRequest("x", open_ports=("abc",)), "port"),
        (LaunchRequest("-x"), "cluster name '-x'"),
    ],
)
def test_bad_values_are_one_line_errors(sky: Any, request_: LaunchRequest, words: str) -> None:
    with pytest.raises(ProvisioningError) as error:
        SkyProvisioner().task_for(request_)
    message = str(error.value)
    assert words in message and "\n" not in message and "\x1b" not in message


# ---------------------------------------------------------------------------------------------------- the calls


def status_record(sky: Any, name: str, status: str = "UP", ssh_ports: list[int] | None = None, **fields: Any) -> Any:
    """A record as ``sky.get(sky.status(...))`` returns it: SkyPilot's StatusResponse around a real handle."""
    from sky.backends.cloud_vm_ray_backend import CloudVmRayResourceHandle
    from sky.schemas.api.responses import StatusResponse

    handle = CloudVmRayResourceHandle.from_dict(
        {
            "cluster_name": name,
            "cluster_name_on_cloud": f"{name}-2ea4",
            "cluster_yaml": None,
            "launched_nodes": 2,
            "launched_resources": {"infra": "aws/us-east-1", "accelerators": {"A10G": 1}},
            "stable_internal_external_ips": [["10.0.0.1", "3.0.0.1"], ["10.0.0.2", "3.0.0.2"]],
            "stable_ssh_ports": ssh_ports or [22, 22],
            "ssh_user": "ubuntu",
        }
    )
    values: dict[str, Any] = {
        "name": name,
        "launched_at": 1700000000,
        "handle": handle,
        "status": sky.ClusterStatus(status),
        "autostop": 30,
        "to_down": False,
        "cluster_hash": "2ea4",
        "cluster_ever_up": True,
        "user_hash": "abcd1234",
        "user_name": "me",
        "workspace": "default",
        "is_managed": False,
        "nodes": 2,
        "cloud": "AWS",
        "region": "us-east-1",
        "credentials": {"ssh_user": "ubuntu", "ssh_private_key": "~/.sky/clients/abcd1234/ssh/sky-key"},
    }
    values.update(fields)
    return StatusResponse(**values)


@pytest.mark.parametrize(("autostop", "idle"), [(30.5, 31), (10, 10), (None, None), (-1, None)])
def test_launch_calls_sky_launch_then_status(sky: Any, fake: FakeSky, autostop: float | None, idle: int | None) -> None:
    fake.results["status"] = [status_record(sky, "gpu")]
    machines = SkyProvisioner().launch(
        LaunchRequest("gpu", instance_type="A10G:1", provider="aws", num_instances=2, autostop_mins=autostop)
    )

    ((args, kwargs),) = fake.named("launch")
    (task,) = args
    assert kwargs == {"cluster_name": "gpu", "retry_until_up": False, "idle_minutes_to_autostop": idle, "down": False}
    assert task.num_nodes == 2 and yaml_resources(task) == {
        "infra": "aws",
        "accelerators": {"A10G": 1},
        "use_spot": False,
    }
    ((status_args, status_kwargs),) = fake.named("status")
    assert status_args == (["gpu"],) and status_kwargs["_include_credentials"] is True
    assert [name for name, _, _ in fake.calls] == ["launch", "get", "status", "get"]  # each request waited for
    assert machines.state == UP and machines.ips == ("3.0.0.1", "3.0.0.2")


def test_status_maps_skypilots_record_to_machines(sky: Any, fake: FakeSky, home: Path) -> None:
    fake.results["status"] = [
        status_record(
            sky,
            "gpu",
            ssh_ports=[2222, 2223],
            credentials={"ssh_user": "ubuntu", "ssh_private_key": "/srv/key", "ssh_private_key_content": "KEY"},
        )
    ]
    machines = SkyProvisioner().status("gpu")
    assert isinstance(machines, Machines)
    assert machines.state == UP
    assert machines.ips == ("3.0.0.1", "3.0.0.2")  # head first
    assert machines.ssh_user == "ubuntu" and machines.ssh_port == 2222
    # The key the API server sent, written where SkyPilot's own client writes it, readable only by us.
    key = Path(machines.ssh_private_key or "")
    assert key == home / ".sky" / "generated" / "ssh-keys" / "gpu.key"
    assert key.read_text() == "KEY" and key.stat().st_mode & 0o777 == 0o600
    assert machines.details["internal_ips"] == ["10.0.0.1", "10.0.0.2"]
    assert machines.details["ssh_ports"] == [2222, 2223]
    assert machines.details["cloud"] == "AWS" and machines.details["region"] == "us-east-1"
    assert machines.ssh_creds() == {"ssh_port": 2222, "ssh_user": "ubuntu", "ssh_private_key": str(key)}


@pytest.mark.parametrize(
    ("status", "state", "ips"),
    [
        ("UP", UP, ("3.0.0.1", "3.0.0.2")),
        ("INIT", INIT, ("3.0.0.1", "3.0.0.2")),
        ("AUTOSTOPPING", INIT, ("3.0.0.1", "3.0.0.2")),
        ("STOPPED", STOPPED, ()),
    ],
)
def test_status_states(sky: Any, fake: FakeSky, home: Path, status: str, state: str, ips: tuple[str, ...]) -> None:
    fake.results["status"] = [status_record(sky, "gpu", status=status)]
    machines = SkyProvisioner().status("gpu")
    assert machines is not None and machines.state == state and machines.ips == ips
    assert machines.ssh_private_key == str(home / ".sky/clients/abcd1234/ssh/sky-key")  # the server's path
    assert machines.ssh_port == 22 and machines.details["sky_status"] == status


def test_status_of_no_such_cluster_is_none(sky: Any, fake: FakeSky) -> None:
    fake.results["status"] = [status_record(sky, "other")]
    assert SkyProvisioner().status("gpu") is None
    fake.results["status"] = sky.exceptions.ClusterDoesNotExist("Cluster 'gpu' does not exist.")
    assert SkyProvisioner().status("gpu") is None


@pytest.mark.parametrize("action", ["stop", "down"])
def test_stop_and_down(sky: Any, fake: FakeSky, action: str) -> None:
    provisioner = SkyProvisioner()
    getattr(provisioner, action)("gpu")
    assert fake.named(action) == [(("gpu",), {})]

    fake.results[action] = sky.exceptions.ClusterDoesNotExist("Cluster 'gpu' does not exist.")
    getattr(provisioner, action)("gpu")  # nothing to do is not an error

    boom = RuntimeError("\x1b[31mFailed to terminate\x1b[0m\nTraceback (most recent call last): ...")
    fake.results[action] = boom
    with pytest.raises(ProvisioningError) as error:
        getattr(provisioner, action)("gpu")
    assert str(error.value) == f"SkyPilot could not {action} cluster 'gpu': RuntimeError: Failed to terminate"
    assert error.value.__cause__ is boom


@pytest.mark.parametrize(
    ("idle", "down", "minutes"),
    [(None, False, -1), (-5, False, -1), (30.5, False, 31), (30.5, True, 31), (0, False, 0)],
)
def test_set_autostop(sky: Any, fake: FakeSky, idle: float | None, down: bool, minutes: int) -> None:
    SkyProvisioner().set_autostop("gpu", idle, down=down)
    assert fake.named("autostop") == [(("gpu",), {"idle_minutes": minutes, "down": down})]


def test_autostop_of_no_such_cluster(sky: Any, fake: FakeSky) -> None:
    missing = sky.exceptions.ClusterDoesNotExist("Cluster 'gpu' does not exist.")
    fake.results["autostop"] = missing
    SkyProvisioner().set_autostop("gpu", None)  # nothing to turn off
    with pytest.raises(ProvisioningError) as error:
        SkyProvisioner().set_autostop("gpu", 10)
    assert str(error.value) == (
        "SkyPilot could not set autostop of cluster 'gpu': ClusterDoesNotExist: Cluster 'gpu' does not exist."
    )
    assert error.value.__cause__ is missing


def test_launch_failures_are_one_line_with_the_cause(sky: Any, fake: FakeSky) -> None:
    unavailable = sky.exceptions.ResourcesUnavailableError(
        "Failed to provision all possible launchable resources.\n..."
    )
    fake.results["launch"] = unavailable
    with pytest.raises(ProvisioningError) as error:
        SkyProvisioner().launch(LaunchRequest("gpu", instance_type="A10G:1", provider="aws"))
    assert str(error.value) == (
        "SkyPilot could not launch cluster 'gpu': "
        "ResourcesUnavailableError: Failed to provision all possible launchable resources."
    )
    assert error.value.__cause__ is unavailable

    fake.results["launch"] = sky.exceptions.NoCloudAccessError("Cloud access is not set up. Run: sky check")
    with pytest.raises(ProvisioningError, match=r"no enabled cloud: set up credentials and run `sky check`$"):
        SkyProvisioner().launch(LaunchRequest("gpu", instance_type="A10G:1", provider="aws"))


# ---------------------------------------------------------------------------------------------------- no cloud


def test_launch_checks_the_requested_cloud_is_enabled_first(
    sky: Any, home: Path, api_server: Callable[[str | None], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a local API server, SkyPilot's cached `sky check` result decides, before any SDK call."""
    from sky import global_user_state

    api_server(None)
    fake = FakeSky(sky, monkeypatch)
    monkeypatch.setattr(global_user_state, "get_cached_enabled_clouds", lambda capability, workspace: [sky.AWS()])
    monkeypatch.setattr(global_user_state, "cluster_with_name_exists", lambda name: True)

    with pytest.raises(ProvisioningError) as error:
        SkyProvisioner().launch(LaunchRequest("gpu", instance_type="A100:1", provider="gcp"))
    assert str(error.value) == "SkyPilot has no enabled cloud (for gcp): set up credentials and run `sky check`"
    assert fake.calls == []

    fake.results["status"] = [status_record(sky, "gpu")]
    for provider in ("aws", "cheapest", None):
        assert SkyProvisioner().launch(LaunchRequest("gpu", instance_type="A10G:1", provider=provider)).state == UP
    assert len(fake.named("launch")) == 3


def _run_python(script: str, cwd: Path, home: Path) -> str:
    """Run ``script`` in a fresh interpreter with a clean environment and ``home``; its stdout, stripped."""
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=_clean_env(home), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SKY_ENV}
    env["HOME"] = str(home)
    return env


def test_no_enabled_cloud_fails_fast_without_calling_skypilot(sky: Any, tmp_path: Path) -> None:
    """A fresh HOME (SkyPilot's real local state, empty): launch refuses in seconds; status/stop/down find nothing.

    In a subprocess, so that SkyPilot's state database is opened in the fresh HOME and nowhere else.
    """
    script = textwrap.dedent(
        """
        import json, time
        import sky
        from runhouse.errors import ProvisioningError
        from runhouse.resources.clusters.provisioning import LaunchRequest
        from runhouse.resources.clusters.sky import SkyProvisioner

        calls = []
        for name in ("launch", "get", "status", "stop", "down", "autostop", "api_start"):
            setattr(sky, name, lambda *a, _name=name, **k: calls.append(_name))
        out = {}
        for key, provider in (("aws", "aws"), ("any", None)):
            started = time.monotonic()
            try:
                SkyProvisioner().launch(LaunchRequest("c1", instance_type="A10G:1", provider=provider))
                out[key] = "launched"
            except ProvisioningError as error:
                out[key] = str(error)
            out[key + "_seconds"] = time.monotonic() - started
        provisioner = SkyProvisioner()
        out["status"] = provisioner.status("c1")
        provisioner.stop("c1")
        provisioner.down("c1")
        provisioner.set_autostop("c1", None)
        try:
            provisioner.set_autostop("c1", 5)
        except ProvisioningError as error:
            out["autostop"] = str(error)
        out["calls"] = calls
        print(json.dumps(out))
        """
    )
    home = tmp_path / "home"
    home.mkdir()
    out = json.loads(_run_python(script, tmp_path, home).splitlines()[-1])
    assert out["aws"] == "SkyPilot has no enabled cloud (for aws): set up credentials and run `sky check`"
    assert out["any"] == "SkyPilot has no enabled cloud: set up credentials and run `sky check`"
    assert out["aws_seconds"] < 10 and out["any_seconds"] < 10
    assert out["status"] is None
    assert out["autostop"] == "SkyPilot could not set autostop of cluster 'c1': no such cluster (`sky status`)"
    assert out["calls"] == []  # no SDK call, so no API server was started
    assert (home / ".sky" / "state.db").exists()  # the state read was the fresh HOME's


# ---------------------------------------------------------------------------------------------------- no SkyPilot


def test_missing_skypilot_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sky", None)  # `import sky` now fails as if it were not installed
    provisioner = provisioning.provisioner("sky")  # the registry still makes it: sky is imported on use
    assert isinstance(provisioner, SkyProvisioner)
    for call in (
        lambda: provisioner.launch(LaunchRequest("gpu", instance_type="A10G:1", provider="aws")),
        lambda: provisioner.task_for(LaunchRequest("gpu")),
        lambda: provisioner.status("gpu"),
        lambda: provisioner.stop("gpu"),
        lambda: provisioner.down("gpu"),
        lambda: provisioner.set_autostop("gpu", 10),
    ):
        with pytest.raises(ProvisioningError) as error:
            call()
        assert str(error.value) == INSTALL_HINT
    assert INSTALL_HINT == 'on-demand clusters need SkyPilot: pip install "runhouse[sky]"'


def test_importing_runhouse_does_not_import_skypilot(tmp_path: Path) -> None:
    script = (
        "import sys, runhouse, runhouse.resources.clusters.provisioning, runhouse.resources.clusters.sky; "
        "print('sky' in sys.modules)"
    )
    assert _run_python(script, tmp_path, tmp_path) == "False"


@pytest.mark.parametrize("down", [False, True])
def test_the_self_stop_command_is_skypilots_own_autostop_code_for_the_head(sky: Any, down: bool) -> None:
    from sky.skylet import autostop_lib

    command = SkyProvisioner().self_stop_command("rh-a10x", down=down)
    expected = autostop_lib.AutostopCodeGen.set_autostop(0, "cloudvmray", autostop_lib.AutostopWaitFor.NONE, down)
    assert command == expected
    assert "set_autostop(0, " in command and f"AutostopWaitFor.NONE, {down}" in command


def test_the_keepalive_command_marks_the_cluster_active_for_skypilots_autostop(sky: Any, tmp_path: Path) -> None:
    from sky.skylet import constants

    command = SkyProvisioner().keepalive_command("rh-a10x")
    assert command.startswith(constants.SKY_PYTHON_CMD)
    assert "autostop_lib.set_last_active_time_to_now()" in command
    # The code it runs is valid Python against this SkyPilot's own skylet library.
    code = command.split(" -u -c ", 1)[1]
    script = subprocess.run(["bash", "-c", f"printf %s {code}"], capture_output=True, text=True, check=True).stdout
    compile(script, "<keepalive>", "exec")
    from sky.skylet import autostop_lib

    assert callable(autostop_lib.set_last_active_time_to_now)
