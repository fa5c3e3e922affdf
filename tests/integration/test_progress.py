"""Progress for long steps (env installs, transfers) on stderr, and quiet mode hiding it for scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import runhouse as rh
from runhouse import progress
from runhouse.errors import ConfigError


def test_an_env_install_is_a_step_and_quiet_mode_hides_it_and_the_installer(
    cluster: rh.Cluster, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rh.env(reqs=["six"], name="progress_env").to(cluster)
    captured = capfd.readouterr()
    assert f"✓ env progress_env ready on {cluster.name}" in captured.err
    assert "(env progress_env)" in captured.out, "the daemon's install messages are shown"

    monkeypatch.setenv("RH_QUIET", "1")
    rh.env(reqs=["six"], name="quiet_env").to(cluster)
    captured = capfd.readouterr()
    assert "quiet_env" not in captured.err + captured.out


def test_a_transfer_ends_with_its_size_and_rate_unless_quiet(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "blob.bin").write_bytes(os.urandom(3_000_000))
    rh.folder(path=str(source)).to("here", path=str(tmp_path / "copy"), progress=True)
    err = capfd.readouterr().err
    assert "✓" in err and "3.0 MB in" in err and "MB/s" in err
    with progress.quietly():
        rh.folder(path=str(source)).to("here", path=str(tmp_path / "copy2"), progress=True)
    assert "MB/s" not in capfd.readouterr().err
    assert (tmp_path / "copy2" / "blob.bin").stat().st_size == 3_000_000


def test_the_quiet_setting_and_the_cli_flag(config_dir: Path) -> None:
    assert not progress.quiet()
    rh.configs.set("quiet", True)
    try:
        assert progress.quiet()
    finally:
        rh.configs.set("quiet", None)
    with pytest.raises(ConfigError, match="quiet must be true or false"):
        rh.configs.set("quiet", "loud")
    code = "import os, runhouse.cli as c; c.main(quiet=True); print(os.environ['RH_QUIET'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "1", out.stderr
    step = "from runhouse import progress\nwith progress.step('a step'): pass"
    loud = subprocess.run([sys.executable, "-c", step], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RH_QUIET": "0"})
    assert "✓ a step" in loud.stderr
    hushed = subprocess.run([sys.executable, "-c", step], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "RH_QUIET": "1"})
    assert hushed.stderr == ""
