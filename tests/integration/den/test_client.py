"""The client side of Den: rh.login, @/ and /owner/ names in save/load/exists/history/share, defaults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import runhouse as rh
from runhouse.account import configs
from runhouse.errors import DenUnreachableError, ObjectNotFoundError
from runhouse.rns.den_client import DenClient
from tests.integration import funcs


def test_login_saves_who_and_where(alice, den):
    assert configs.get("username") == alice.name
    assert configs.get("den_url") == den.url
    assert configs.get("token") == alice.token
    assert rh.current_folder() == f"/{alice.name}"


def test_bare_names_save_to_den_and_tilde_still_saves_locally(alice, project):
    rh.env(env_vars={"A": "1"}, name="den_env").save()
    assert rh.exists(f"/{alice.name}/den_env") and rh.exists("@/den_env")
    rh.env(env_vars={"A": "2"}, name="local_env").save("~/local_env")
    assert (project / "rh" / "local_env" / "config.json").exists()
    assert not (project / "rh" / "den_env").exists()


def test_function_saved_in_den_loads_and_calls_in_a_fresh_process(alice, cluster, project):
    box = rh.cluster(name="@/boxes/test_box", host="localhost", server_port=cluster.server_port).save()
    rh.function(funcs.add).to(box).save("@/fns/add")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import runhouse as rh
            print(rh.function(name="/{alice.name}/fns/add")(20, 22, stream_logs=False))
        """)],
        cwd=project, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def test_history_versions_and_unchanged_saves(alice):
    env = rh.env(env_vars={"V": "1"}, name="versioned_env").save()
    env.save()  # unchanged: no new version
    rh.env(env_vars={"V": "2"}, name="versioned_env").save()
    versions = rh.load("versioned_env").history()
    assert len(versions) == 2 and versions[-1]["current"] and versions[0]["author"] == alice.name
    assert rh.load("versioned_env", version=versions[0]["version"]).env_vars == {"V": "1"}
    assert rh.load("versioned_env").delete_configs() is True
    with pytest.raises(ObjectNotFoundError):
        rh.load("versioned_env")


def test_share_lets_another_user_read_and_strangers_are_refused(alice, den):
    env = rh.env(env_vars={"S": "1"}, name="shared_env").save()
    bob, carol = den.user("bob"), den.user("carol")
    env.share(bob.name, access_level="read")
    address = f"/{alice.name}/shared_env"
    assert DenClient(den.url, bob.token).get(address)["config"]["env_vars"] == {"S": "1"}
    from runhouse.errors import PermissionDeniedError

    with pytest.raises(PermissionDeniedError):
        DenClient(den.url, carol.token).get(address)
    env.unshare(bob.name)
    with pytest.raises(PermissionDeniedError):
        DenClient(den.url, bob.token).get(address)


def test_share_takes_runhouses_documented_keywords(alice, den):
    env = rh.env(env_vars={"S": "2"}, name="shared_env_documented").save()
    bob = den.user("bob")
    env.share([bob.name], access_type="write", notify_users=False)
    address = f"/{alice.name}/shared_env_documented"
    assert DenClient(den.url, bob.token).get(address)["config"]["env_vars"] == {"S": "2"}
    with pytest.raises(ValueError, match="disagree"):
        env.share(bob.name, access_level="read", access_type="write")


def test_defaults_upload_and_download(alice):
    configs.set("default_autostop", 45)
    configs.upload_defaults()
    configs.set("default_autostop", None)
    assert configs.download_defaults()["default_autostop"] == 45
    assert configs.get("default_autostop") == 45
    configs.set("default_autostop", None)


def test_unreachable_den_is_a_clear_error_and_local_saves_still_work(config_dir, project):
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    configs.set("den_url", url)
    configs.set("token", "some-token")
    configs.set("username", "someone")
    try:
        with pytest.raises(DenUnreachableError, match=url):
            rh.env(env_vars={"U": "1"}, name="lost_env").save("@/lost_env")
        rh.env(env_vars={"U": "1"}, name="kept_env").save("~/kept_env")
        assert (project / "rh" / "kept_env" / "config.json").exists()
    finally:
        rh.logout()
        configs.set("den_url", None)


def test_logout_returns_bare_names_to_the_local_folder(alice):
    import runhouse.rns.store as store

    store._current_folder = None  # forget the folder the fixture set, to see the default
    assert rh.current_folder() == "@"
    rh.logout()
    assert rh.current_folder() == "~"


def test_runhouse_login_prompts_for_the_token_and_offers_defaults(den, config_dir, project):
    user = den.user("dora")
    configs.set("default_autostop", 15)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "runhouse.cli", "login", "--den-url", den.url],
            input=f"{user.token}\ny\nn\n", cwd=project, capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert f"logged in as {user.name}" in out.stdout
        assert configs.get("username") == user.name
        assert DenClient(den.url, user.token).get_defaults() == {"default_autostop": 15}  # uploaded when asked
        out = subprocess.run([sys.executable, "-m", "runhouse.cli", "logout"], capture_output=True, text=True)
        assert out.returncode == 0 and configs.get("token") is None
    finally:
        rh.logout()
        configs.set("den_url", None)
        configs.set("default_autostop", None)
