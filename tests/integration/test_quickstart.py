"""``make demo`` runs examples/quickstart.py: it must keep working end to end (daemon, Den, secrets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


def test_the_quickstart_runs_from_start_to_end(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    env = {**os.environ, "RH_CONFIG_DIR": str(tmp_path / "rh-config"), "RH_DEMO_PORT": str(free_port())}
    out = subprocess.run([sys.executable, str(QUICKSTART)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2. add(1, 2) on the cluster = 3" in out.stdout
    assert "add(5, 6) loaded from Den = 11" in out.stdout
    assert "round trip ok: True" in out.stdout
    assert "9. daemon and Den stopped" in out.stdout
