"""Shipping code to a host: the user's git repo (changed files only) and the wheel of this runhouse build.

``.to(cluster)`` of code imported from a file makes the file's repo importable on the host: the repo's files
(what git does not ignore) are rsynced into ``<runhouse folder>/code/<repo name>-<hash of its path>``, and
nothing moves when the tree (names, sizes, modification times) is unchanged since the last sync.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runhouse import progress
from runhouse.paths import config_dir
from runhouse.rns.local_store import repo_root
from runhouse.transport.ssh import SSHConnection
from runhouse.version import PACKAGE_DIR, __version__, build_id

SYNC_TIMEOUT_S = 600.0
WHEEL_BUILD_TIMEOUT_S = 900.0
STEP_TIMEOUT_S = 30.0
_TREE_MARKER = ".rh-tree-hash"


class RepoShipper:
    """Keeps the repos of code deployed to one host in sync there, remembering what it already sent."""

    def __init__(self, connection: Callable[[], SSHConnection], remote_config_dir: Callable[[], str]) -> None:
        self._connection = connection  # the host's current connection (it is replaced when a host key is accepted)
        self._remote_config_dir = remote_config_dir
        self._synced: dict[str, str] = {}  # local repo -> tree hash last synced

    def ship(self, spec: dict[str, Any], install_requirements: Callable[[str], None]) -> dict[str, Any]:
        """``spec`` with its import root pointing at the repo's copy on the host, synced first.

        Code sent by value (``pickled``) or without a root needs nothing. ``install_requirements(path)`` is
        called with the remote ``requirements.txt`` when the repo has one and its files changed.
        """
        if spec.get("pickled") or not spec.get("root"):
            return spec
        local_root = Path(spec["root"])
        repo = repo_root(local_root)
        remote_repo = self.sync(repo, install_requirements)
        relative = local_root.relative_to(repo)
        return {**spec, "root": str(Path(remote_repo) / relative) if str(relative) != "." else remote_repo}

    def sync(self, repo: Path, install_requirements: Callable[[str], None]) -> str:
        """Sync ``repo`` to the host unless its tree is unchanged; returns the copy's path there."""
        digest = hashlib.sha256(str(repo).encode()).hexdigest()[:8]
        remote_repo = f"{self._remote_config_dir()}/code/{repo.name}-{digest}"
        files = repo_files(repo)
        tree = tree_hash(repo, files)
        if self._synced.get(str(repo)) == tree:
            return remote_repo
        marker = f"{remote_repo}/{_TREE_MARKER}"
        connection = self._connection()
        if connection.run(f"cat {marker}", timeout=STEP_TIMEOUT_S).stdout.strip() != tree:
            with progress.step(f"sync {repo.name} ({len(files)} files) to {connection.creds.host}"):
                connection.run(f"mkdir -p {shlex.quote(remote_repo)}", timeout=STEP_TIMEOUT_S, check=True)
                connection.rsync(f"{repo}/", f"{remote_repo}/", files_from=files, timeout=SYNC_TIMEOUT_S)
            if "requirements.txt" in files:
                with progress.step(f"install {repo.name}'s requirements.txt on {connection.creds.host}"):
                    install_requirements(f"{remote_repo}/requirements.txt")
            connection.run(f"echo {tree} > {marker}", timeout=STEP_TIMEOUT_S, check=True)
        self._synced[str(repo)] = tree
        return remote_repo

    @property
    def synced(self) -> dict[str, str]:
        """What was sent: each local repo and the tree hash it had (a copy)."""
        return dict(self._synced)


def repo_files(repo: Path) -> list[str]:
    """Files of the repo that git does not ignore (tracked and untracked), or every file outside a repo."""
    if (repo / ".git").exists():
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "-z"],
            capture_output=True, check=True, timeout=60,
        ).stdout
        return sorted(f for f in out.decode().split("\0") if f and (repo / f).is_file())
    return sorted(
        str(p.relative_to(repo)) for p in repo.rglob("*")
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(repo).parts)
    )


def tree_hash(repo: Path, files: Sequence[str]) -> str:
    """A hash of the files' names, sizes and modification times (changes when any file does)."""
    digest = hashlib.sha256()
    for name in files:
        stat = (repo / name).stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def local_wheel() -> Path:
    """The wheel of this exact runhouse build (built once per build id from the source tree it runs from).

    A source tree is copied first (the package, ``pyproject.toml``, ``README.md``), so the wheel holds what
    the build id hashes and nothing else: setuptools' ``build/`` folder in a checkout keeps modules that
    have since been deleted, and a wheel carrying them would never match this build on the host.
    """
    build = config_dir() / "wheels" / build_id()
    wheels = list(build.glob("runhouse-*.whl"))
    if wheels:
        return wheels[0]
    source = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").exists() else None
    with tempfile.TemporaryDirectory(prefix="rh-wheel-") as scratch:
        target = f"runhouse=={__version__}"
        if source is not None:
            target = str(Path(scratch) / "src")
            shutil.copytree(PACKAGE_DIR, Path(target) / PACKAGE_DIR.name, ignore=shutil.ignore_patterns("__pycache__"))
            for name in ("pyproject.toml", "README.md"):
                shutil.copy2(source / name, Path(target) / name)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "--wheel-dir",
             str(build), target],
            check=True, timeout=WHEEL_BUILD_TIMEOUT_S, capture_output=True,
        )
    return next(build.glob("runhouse-*.whl"))
