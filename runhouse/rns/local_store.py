"""The local store: resource configs as JSON files in the ``rh/`` folder of the user's git repo.

``~/a/b`` lives in ``<repo>/rh/a/b/config.json``, where ``<repo>`` is the git root of the current directory
(the current directory itself outside a git repo). Every save that changes the config first moves the
previous one to ``rh/a/b/.history/<version>.json``; writes are atomic (temp file, fsync, rename) and
serialized between processes by a lock file, so concurrent saves never corrupt anything. ``rh/.gitignore``
keeps lock files and histories out of git: only the configs are committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runhouse.errors import InvalidNameError, ObjectNotFoundError
from runhouse.paths import write_atomic

CONFIG_FILE = "config.json"
HISTORY_DIR = ".history"
LOCK_FILE = ".lock"
RNS_DIR = "rh"
GITIGNORE = ".gitignore"
# What git should not pick up in rh/: lock files and the history of configs (the configs themselves are committed).
_IGNORED = (LOCK_FILE, f"{HISTORY_DIR}/")


def repo_root(start: Path | None = None) -> Path:
    """The git root of ``start`` (default: the current directory), or ``start`` itself outside a repo."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return folder
    return here


def repo_relative(path: Path) -> str | None:
    """``path`` (absolute) relative to the root of the git repo holding it, as a config keeps it so that it
    names no folder of the author's machine; None outside a git repo."""
    repo = repo_root(path)
    if not (repo / ".git").exists():
        return None
    return path.resolve().relative_to(repo).as_posix()


def rns_root(start: Path | None = None) -> Path:
    return repo_root(start) / RNS_DIR


def _folder(parts: tuple[str, ...], root: Path | None = None) -> Path:
    if CONFIG_FILE in parts:
        raise InvalidNameError(f"{'/'.join(parts)!r}: {CONFIG_FILE!r} is reserved by the local store")
    base = (root or rns_root()).resolve()
    path = base.joinpath(*parts)
    # Defence in depth: names are validated by runhouse.rns.names, but never write outside rh/.
    if path.resolve() != path or base not in (path, *path.parents):
        raise InvalidNameError(f"{'/'.join(parts)!r} would leave the rh/ folder")
    return path


def _now_version() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _dump(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            lock = open(folder / LOCK_FILE, "a")  # noqa: SIM115 (closed below)
            break
        except FileNotFoundError:  # a delete elsewhere pruned the empty folder just made: make it again
            continue
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ignore_bookkeeping(base: Path) -> None:
    """Give rh/ a .gitignore naming its lock files and histories (lines it lacks are added, none removed)."""
    path = base / GITIGNORE
    current = path.read_text() if path.exists() else ""
    missing = [line for line in _IGNORED if line not in current.splitlines()]
    if missing:
        prefix = "" if not current or current.endswith("\n") else "\n"
        write_atomic(path, current + prefix + "".join(f"{line}\n" for line in missing), mode=0o644)


def save(parts: tuple[str, ...], config: dict[str, Any], root: Path | None = None) -> bool:
    """Save ``config`` under ``parts``; returns False (and writes nothing) when it is unchanged."""
    folder = _folder(parts, root)
    base = (root or rns_root()).resolve()
    base.mkdir(parents=True, exist_ok=True)
    _ignore_bookkeeping(base)
    text = _dump(config)
    with _locked(folder):
        current = folder / CONFIG_FILE
        if current.exists():
            old = current.read_text()
            if old == text:
                return False
            history = folder / HISTORY_DIR
            history.mkdir(exist_ok=True)
            version = datetime.fromtimestamp(current.stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            target = history / f"{version}.json"
            while target.exists():  # two saves within the clock's resolution
                version = _now_version()
                target = history / f"{version}.json"
            write_atomic(target, old, mode=0o644)
        write_atomic(current, text, mode=0o644)
    return True


def load(parts: tuple[str, ...], version: str | None = None, root: Path | None = None) -> dict[str, Any]:
    """The config saved under ``parts`` (an older one by ``version``, as listed by :func:`history`).

    Raises:
        ObjectNotFoundError: nothing is saved there (or no such version).
    """
    folder = _folder(parts, root)
    path = folder / CONFIG_FILE
    if version is not None and version != _current_version(path):
        path = folder / HISTORY_DIR / f"{version}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        what = f"version {version} of " if version else ""
        raise ObjectNotFoundError(f"no {what}resource saved at ~/{'/'.join(parts)}") from None


def _current_version(path: Path) -> str | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    except FileNotFoundError:
        return None


def exists(parts: tuple[str, ...], root: Path | None = None) -> bool:
    return (_folder(parts, root) / CONFIG_FILE).exists()


def history(parts: tuple[str, ...], root: Path | None = None) -> list[dict[str, Any]]:
    """Every saved version, oldest first; the last one is the current config."""
    folder = _folder(parts, root)
    versions = [{"version": p.stem, "current": False} for p in sorted((folder / HISTORY_DIR).glob("*.json"))]
    current = _current_version(folder / CONFIG_FILE)
    if current is not None:
        versions.append({"version": current, "current": True})
    return versions


def delete(parts: tuple[str, ...], root: Path | None = None) -> bool:
    """Delete the config and its history; resources saved below it are kept. Returns whether it existed."""
    folder = _folder(parts, root)
    if not (folder / CONFIG_FILE).exists():
        return False
    with _locked(folder):
        (folder / CONFIG_FILE).unlink(missing_ok=True)
        shutil.rmtree(folder / HISTORY_DIR, ignore_errors=True)
    (folder / LOCK_FILE).unlink(missing_ok=True)
    _prune(folder, (root or rns_root()).resolve())
    return True


def _prune(folder: Path, base: Path) -> None:
    """Remove ``folder`` and the folders above it that hold nothing any more, up to rh/ itself, which goes
    too (with the .gitignore runhouse gave it) when no config is left in it."""
    with contextlib.suppress(OSError):
        while folder != base:
            folder.rmdir()  # only an empty folder: anything saved below it stops the walk
            folder = folder.parent
        if [child.name for child in base.iterdir()] == [GITIGNORE] and _owns_gitignore(base):
            (base / GITIGNORE).unlink()
            base.rmdir()


def _owns_gitignore(base: Path) -> bool:
    """Whether rh/.gitignore holds only the lines runhouse writes (a user's own lines keep it)."""
    return set((base / GITIGNORE).read_text().split()) <= set(_IGNORED)


def list_folder(parts: tuple[str, ...], root: Path | None = None) -> list[dict[str, Any]]:
    """The resources directly in a folder: name, resource_type and last-saved time; sub-folders too."""
    folder = _folder(parts, root)
    entries = []
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not child.is_dir() or child.name.startswith("."):
            continue
        config_path = child / CONFIG_FILE
        if config_path.exists():
            try:
                resource_type = json.loads(config_path.read_text()).get("resource_type", "?")
            except ValueError:
                resource_type = "unreadable"
            saved = datetime.fromtimestamp(config_path.stat().st_mtime, timezone.utc)
            entries.append({"name": child.name, "resource_type": resource_type, "saved_at": saved.isoformat()})
        elif any(child.iterdir()):
            entries.append({"name": child.name, "resource_type": "folder", "saved_at": None})
    return entries
