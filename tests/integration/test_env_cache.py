"""Making an env's virtual environment: from uv's cache alone when it holds the requirements, else the index."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from runhouse.errors import EnvCreationError
from runhouse.paths import envs_dir
from runhouse.server.envs import EnvSpec, ensure_python

pytest.importorskip("uv")

CACHED = "six==1.16.0"  # also what test_daemon installs
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing answers there


def _make(spec: EnvSpec, lines: list[str] | None = None) -> tuple[str, list[str]]:
    lines = [] if lines is None else lines
    python = asyncio.run(ensure_python(spec, lines.append))
    return python, lines


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request the installer makes goes to a proxy that refuses it (uv's cache keys stay the same)."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, UNREACHABLE)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


@pytest.fixture
def cached_six() -> None:
    """six 1.16.0 in uv's cache (installed once from the index if it was not), its venv removed again."""
    _make(EnvSpec("warm", reqs=(CACHED,)))
    shutil.rmtree(envs_dir(), ignore_errors=True)


def test_requirements_in_uv_cache_install_without_the_network(cached_six, no_network):
    python, lines = _make(EnvSpec("from_cache", reqs=(CACHED,)))
    assert not any("package index" in line for line in lines), lines
    assert any("six==1.16.0" in line for line in lines), lines  # the installer's own lines still shown
    out = subprocess.run([python, "-c", "import six, runhouse; print(six.__version__)"], capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "1.16.0"


def test_requirements_not_in_the_cache_go_to_the_index(cached_six, no_network):
    lines: list[str] = []
    with pytest.raises(EnvCreationError, match="could not install"):
        _make(EnvSpec("not_cached", reqs=(CACHED, "runhouse-no-such-package-xyz==0.0.1")), lines)
    assert any("not all in uv's cache; installing from the package index" in line for line in lines), lines
    assert any("127.0.0.1:9" in line or "onnect" in line for line in lines), lines  # it did try the network
    assert not list(envs_dir().iterdir())  # nothing left behind
