"""``make demo`` runs examples/quickstart.py: it must keep working end to end (daemon, Den, secrets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


def test_the_quickstart_runs_from_start_to_end_and_leaves_nothing_behind(tmp_path: Path) -> None:
    project, scratch = tmp_path / "project", tmp_path / "tmp"
    scratch.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RH_CONFIG_DIR", "RH_TOKEN", "RH_DEN_URL")}
    env.update(TMPDIR=str(scratch), RH_DEMO_PORT=str(free_port()))
    out = subprocess.run([sys.executable, str(QUICKSTART)], cwd=project, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2. add(1, 2) on the cluster = 3" in out.stdout
    assert "add(5, 6) loaded from Den = 11" in out.stdout
    assert "round trip ok: True" in out.stdout
    assert "9. daemon and Den stopped" in out.stdout
    assert list(scratch.iterdir()) == [], "the demo's temporary config folder is deleted"
    assert sorted(p.name for p in project.iterdir()) == [".git"], "nothing left in the user's repo"
