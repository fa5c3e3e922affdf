"""A newcomer's first hour with Den, as the README has them do it: logging in with no arguments, RH_TOKEN alone,
logging out, names found in the other store, ``runhouse ls``, ``default_folder``, sharing, and a function
shared from someone's own machine."""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import runhouse as rh
from runhouse.config import configs
from runhouse.errors import ObjectNotFoundError
from tests.integration import funcs
from tests.integration.den.conftest import DenServer, DenUser, sqlite_den_in

RUNHOUSE = [sys.executable, "-m", "runhouse.cli"]


@pytest.fixture(scope="module")
def den(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DenServer]:
    """One Den on SQLite: what these tests look at is the client's side, the same on either database."""
    with sqlite_den_in(tmp_path_factory.mktemp("den")) as server:
        yield server


def run_python(code: str, env: dict[str, str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], input=stdin, env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=90)


def other_machine(tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    """The environment of a process on another machine: its own runhouse folder, nobody logged in."""
    folder = tmp_path / name
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RH_TOKEN", "RH_DEN_URL")}
    return {**env, "RH_CONFIG_DIR": str(folder), **extra}


# --- rh.login() and RH_TOKEN -------------------------------------------------------------------------------


def test_login_without_arguments_and_without_a_terminal_says_how_to_pass_a_token(
    den: DenServer, tmp_path: Path
) -> None:
    env = other_machine(tmp_path, "no_tty", RH_DEN_URL=den.url)
    out = run_python("import runhouse as rh; rh.login()", env, tmp_path)
    assert out.returncode != 0
    assert "ConfigError" in out.stderr
    assert "token=" in out.stderr and "RH_TOKEN" in out.stderr and "runhouse login" in out.stderr


def test_login_without_arguments_prompts_at_a_terminal(den: DenServer, tmp_path: Path) -> None:
    user = den.user("tty")
    env = other_machine(tmp_path, "tty")
    code = "import runhouse as rh; print('USER=' + rh.login())"
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.chdir(tmp_path)
        os.execve(sys.executable, [sys.executable, "-c", code], env)
    seen = b""
    answers = [(b"Den URL", den.url), (b"Den token", user.token)]
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            if answers and answers[0][0] in seen:
                os.write(fd, answers.pop(0)[1].encode() + b"\n")
            elif not answers and b"[y/N]" in seen.rsplit(b"\n", 1)[-1]:
                os.write(fd, b"n\n")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
    assert f"USER={user.name}".encode() in seen
    assert user.token.encode() not in seen, "the token is read without echo"
    saved = (tmp_path / "tty" / "config.yaml").read_text()
    assert user.name in saved and den.url in saved


def test_rh_token_alone_is_a_login_and_wins_over_another_users_config_file(
    den: DenServer, tmp_path: Path
) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    env = other_machine(tmp_path, "shared_box")
    login = run_python(f"import runhouse as rh; rh.login(token={alice.token!r}, den_url={den.url!r})", env, tmp_path)
    assert login.returncode == 0, login.stderr
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    code = """
        import runhouse as rh
        print(rh.configs.get("username"), rh.configs.get("default_folder"))
        rh.env(env_vars={"X": "1"}, name="bobs_env").save()
        print(rh.load("bobs_env").rns_address)
    """
    out = run_python(code, {**env, "RH_TOKEN": bob.token}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [bob.name, f"/{bob.name}", f"/{bob.name}/bobs_env"]
    cache = tmp_path / "shared_box" / "den_users.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert bob.token not in cache.read_text() and bob.name in json.loads(cache.read_text()).values()
    # Asked of Den once: another process finds the answer cached and never asks whose token it is.
    probe = """
        import runhouse as rh, runhouse.rns.den_client as den_client
        den_client.check_token = None  # any question to Den about the token would fail here
        print(rh.configs.get("username"))
    """
    cached = run_python(probe, {**env, "RH_TOKEN": bob.token}, tmp_path)
    assert cached.returncode == 0 and cached.stdout.strip() == bob.name, cached.stderr
    # The file still belongs to alice: without RH_TOKEN she is the user again.
    out = run_python('import runhouse as rh; print(rh.configs.get("username"))', env, tmp_path)
    assert out.stdout.strip() == alice.name


def test_rh_login_with_rh_token_checks_it_and_writes_no_token(den: DenServer, tmp_path: Path) -> None:
    bob = den.user("bob")
    env = other_machine(tmp_path, "ci", RH_TOKEN=bob.token)
    out = run_python(f"import runhouse as rh; print(rh.login(den_url={den.url!r}))", env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == bob.name
    assert bob.token not in (tmp_path / "ci" / "config.yaml").read_text()
    wrong = run_python(f"import runhouse as rh; rh.login(den_url={den.url!r})", {**env, "RH_TOKEN": "nope"}, tmp_path)
    assert wrong.returncode != 0 and "AuthenticationError" in wrong.stderr


def test_logout_offers_to_delete_the_secrets_stored_in_den(den: DenServer, tmp_path: Path) -> None:
    user = den.user("leaving")
    env = other_machine(tmp_path, "leaving")
    put = f"""
        import runhouse as rh
        rh.login(token={user.token!r}, den_url={den.url!r})
        rh.secret(name="api-key", provider="my-api", values={{"key": "s3cr3t"}}).save()
        print(sorted(rh.Secrets.names()))
    """
    out = run_python(put, env, tmp_path)
    assert out.returncode == 0 and "api-key" in out.stdout, out.stderr
    kept = subprocess.run([*RUNHOUSE, "logout", "--keep-secrets"], input="n\n", env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert kept.returncode == 0, kept.stderr
    assert "api-key" in kept.stdout + kept.stderr, "the prompt names the secrets it would delete"
    assert "api-key" in json.dumps(user.http.get(f"/v1/secrets/{user.name}").json())

    assert run_python(put, env, tmp_path).returncode == 0
    gone = subprocess.run([*RUNHOUSE, "logout", "--keep-secrets"], input="y\n", env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 0, gone.stderr
    assert user.http.get(f"/v1/secrets/{user.name}").json()["secrets"] == []
    assert "s3cr3t" not in gone.stdout + gone.stderr


# --- names: hints, ls, default_folder, share ---------------------------------------------------------------


def test_a_local_name_missing_in_den_says_where_it_exists(alice: DenUser, project: Path) -> None:
    rh.env(env_vars={"A": "1"}, name="mine").save("~/mine")
    with pytest.raises(ObjectNotFoundError, match=r"~/mine exists"):
        rh.load("mine")  # bare: /alice/mine after login
    rh.env(env_vars={"A": "2"}, name="den_only").save("@/den_only")
    with pytest.raises(ObjectNotFoundError, match=rf"/{alice.name}/den_only exists"):
        rh.load("~/den_only")
    with pytest.raises(ObjectNotFoundError) as nowhere:
        rh.load("nowhere")
    assert "exists" not in str(nowhere.value)


def test_default_folder_reports_where_bare_names_go(alice: DenUser, project: Path) -> None:
    import runhouse.rns.store as store

    store._current_folder = None  # the folder the fixture set hides the default
    assert rh.configs.get("default_folder") == f"/{alice.name}"
    configs.set("default_folder", "~/proj")
    try:
        assert rh.configs.get("default_folder") == "~/proj"
    finally:
        configs.set("default_folder", None)
    rh.logout()
    assert rh.configs.get("default_folder") == "~"


def test_runhouse_ls_lists_local_and_den_names_marked(alice: DenUser, project: Path) -> None:
    rh.env(env_vars={"A": "1"}, name="here_env").save("~/proj/here_env")
    rh.env(env_vars={"A": "1"}, name="there_env").save("@/proj/there_env")
    out = subprocess.run([*RUNHOUSE, "ls", "~/proj"], cwd=project, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if "_env" in line]
    assert any("~/proj/here_env" in row and "local" in row for row in rows), out.stdout
    assert any(f"/{alice.name}/proj/there_env" in row and "den" in row for row in rows), out.stdout
    # The shell turned ~/proj into $HOME/proj: still the local folder.
    expanded = subprocess.run([*RUNHOUSE, "ls", str(Path.home() / "proj")], cwd=project, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert expanded.returncode == 0, expanded.stderr
    assert "~/proj/here_env" in expanded.stdout


def test_share_returns_the_documented_pair(den: DenServer, alice: DenUser, project: Path) -> None:
    bob, carol = den.user("bob"), den.user("carol", email=f"carol-{os.getpid()}@example.com")
    env = rh.env(env_vars={"A": "1"}, name="shared_env").save("@/shared_env")
    result = env.share([bob.name, f"carol-{os.getpid()}@example.com"], access_type="read")
    added, by_email = result
    assert added == {bob.name: "read"}
    assert by_email == {f"carol-{os.getpid()}@example.com": "read"}
    assert {row["user"] for row in result["shares"]} >= {bob.name, carol.name}


# --- a function shared from someone's own daemon -----------------------------------------------------------


def test_a_function_on_someone_elses_local_daemon_says_which_cluster_it_is_on(
    den: DenServer, alice: DenUser, cluster: rh.Cluster, project: Path, tmp_path: Path
) -> None:
    bob = den.user("bob")
    remote_add = rh.function(funcs.add).to(cluster)
    assert remote_add(1, 2) == 3
    remote_add.save("@/fns/add")
    remote_add.share([bob.name])
    env = other_machine(tmp_path, "bobs_laptop", RH_TOKEN=bob.token, RH_DEN_URL=den.url)
    code = f"""
        import runhouse as rh
        from runhouse.errors import ClusterUnreachableError
        fn = rh.function(name="/{alice.name}/fns/add")
        try:
            fn(1, 2)
        except ClusterUnreachableError as exc:
            print("UNREACHABLE", exc)
    """
    out = run_python(code, env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "UNREACHABLE" in out.stdout, out.stdout + out.stderr
    assert "local daemon of" in out.stdout and "not of this machine" in out.stdout
    assert str(cluster.server_port) in out.stdout
    assert "token" not in out.stdout.lower()
    assert rh.function(name="@/fns/add")(2, 3) == 5  # on alice's own machine it is her daemon
