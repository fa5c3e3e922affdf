"""Packages: a local package folder, a git URL or a pip requirement, installed into an env on a cluster.

What a package is gets decided once, when it is made (:attr:`Package.kind`):

- ``local``: an existing folder with ``pyproject.toml``, ``setup.py`` or ``setup.cfg``. It goes to the cluster
  the way deployed code does (:meth:`~runhouse.resources.clusters.base.Cluster.prepare_code`: rsynced over
  SSH, only when its files changed; used in place on this machine's daemon) and is installed editable there.
- ``git``: ``git+https://...``, ``https://host/org/repo.git``, ``git@host:org/repo.git``, each optionally
  ``@ref``; installed (cloned) on the cluster as the pip requirement ``git+<url>``.
- ``pip``: anything else that is not a path, like ``numpy>=1.26`` or ``requests[socks]``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runhouse.errors import DataNotFoundError, PackageError
from runhouse.protocol import PACKAGE_FILES
from runhouse.resources.resource import Resource
from runhouse.rns.local_store import repo_relative, repo_root

if TYPE_CHECKING:
    from runhouse.resources.clusters.base import Cluster
    from runhouse.resources.env import Env

KINDS = ("local", "git", "pip")
# git@host:org/repo.git[@ref], the scp-like form git itself takes (pip needs it as git+ssh://git@host/org/repo.git)
_SCP_GIT = re.compile(r"^(?P<user>[\w.-]+)@(?P<host>[\w.-]+):(?P<path>[^/@][^@]*?\.git)(?:@(?P<ref>[^@]+))?$")
_URL = re.compile(r"^(https?|ssh|file)://", re.IGNORECASE)
_PATH_PREFIXES = ("./", "../", "/", "~")
_PATHLIKE = re.compile(r"^[\w.\-/]+$")  # src/my_pkg: a relative path (a requirement has no "/" outside URLs)


class Package(Resource):
    """A Python package to install into an env on a cluster: a local folder, a git URL or a pip requirement.

    ``kind`` is ``"local"``, ``"git"`` or ``"pip"``; ``install_target`` is the folder's absolute path on this
    machine, or the requirement handed to the installer (``git+<url>`` for git).
    """

    RESOURCE_TYPE = "package"

    def __init__(
        self, install_target: str | os.PathLike[str], kind: str | None = None, name: str | None = None
    ) -> None:
        if kind is None:
            kind, install_target = _classify(install_target)
        elif kind not in KINDS:
            raise PackageError(f"a package's kind is one of {', '.join(KINDS)}, not {kind!r}")
        else:
            install_target = _checked_text(str(install_target))
        self.kind: str = kind
        self.install_target: str = str(install_target)
        super().__init__(name)

    def to(self, system: Cluster, env: Env | str | None = None) -> Package:
        """Install this package on ``system`` into ``env`` (the cluster's default env when None); returns self.

        See :meth:`~runhouse.resources.clusters.base.Cluster.install_packages`.
        """
        system.install_packages([self], env=env)
        return self

    def install_spec(self, system: Cluster, env: str) -> dict[str, str]:
        """What the daemon of ``system`` installs for this package into ``env``: a local folder is shipped first
        (unless unchanged) and named by its path there, with a hash of its files as its version.

        Raises:
            DataNotFoundError: a local package's folder no longer exists.
        """
        if self.kind != "local":
            return {"kind": self.kind, "target": self.install_target}
        from runhouse.resources.clusters.code import repo_files, tree_hash

        folder = Path(self.install_target)
        if not folder.is_dir():
            raise DataNotFoundError(f"the folder of package {self.name or folder.name!r} is gone: {folder}")
        # Installing writes <name>.egg-info into the folder: it is not a change to the package.
        files = [f for f in repo_files(folder) if not any(p.endswith(".egg-info") for p in Path(f).parts)]
        there = system.prepare_code({"root": str(folder)}, env)["root"]
        return {"kind": "local", "target": there, "version": tree_hash(folder, files)}

    def config(self) -> dict[str, Any]:
        """The package's config; a local folder inside a git repo is named relative to the repo's root
        (``in_repo``), read against the reader's checkout, never as a folder of the author's machine."""
        config = {**super().config(), "kind": self.kind, "install_target": self.install_target}
        relative = repo_relative(Path(self.install_target)) if self.kind == "local" else None
        if relative is not None:
            config.update(install_target=relative, in_repo=True)
        return config

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> Package:
        target = config["install_target"]
        if config.get("in_repo"):
            target = str(repo_root() / target)
        return cls(target, kind=config["kind"], name=config.get("name"))

    def __repr__(self) -> str:
        named = f" {self.rns_address or self.name!r}" if self.name else ""
        return f"<Package{named} {self.kind}: {self.install_target}>"


def _checked_text(text: str) -> str:
    """``text`` stripped, unless it is empty, holds control characters, or is a command-line option."""
    stripped = text.strip()
    if not stripped:
        raise PackageError("a package is a folder, a git URL or a pip requirement like 'numpy>=1.26', not ''")
    if any(ord(c) < 32 or c == "\x7f" for c in stripped):
        raise PackageError(f"package {text!r} contains control characters")
    if stripped.startswith("-"):
        raise PackageError(
            f"package {text!r} is a command-line option, not a package: give a requirement like 'numpy>=1.26' "
            "(installer options such as --index-url are not accepted)"
        )
    return stripped


def git_requirement(text: str) -> str | None:
    """The pip requirement (``git+<url>[@ref]``) of a git URL, or None when ``text`` is not one."""
    if text.startswith("git+"):
        return text
    scp = _SCP_GIT.match(text)
    if scp:
        ref = f"@{scp['ref']}" if scp["ref"] else ""
        return f"git+ssh://{scp['user']}@{scp['host']}/{scp['path']}{ref}"
    if _URL.match(text) and (text.endswith(".git") or ".git@" in text):
        return f"git+{text}"
    return None


def _looks_like_path(text: str) -> bool:
    return text in (".", "..") or text.startswith(_PATH_PREFIXES) or ("/" in text and _PATHLIKE.match(text) is not None)


def _classify(target: str | os.PathLike[str]) -> tuple[str, str]:
    """The kind of a package given as a path, git URL or pip requirement, and its install target.

    Raises:
        DataNotFoundError: it looks like a path (``./x``, ``/x``, ``~/x``) but nothing is there.
        PackageError: a folder that is no package, a file, or text that is no requirement.
    """
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str):
        raise PackageError(f"a package is a folder, a git URL or a pip requirement string, not {target!r}")
    text = _checked_text(target)
    git = git_requirement(text)
    if git is not None:
        return "git", git
    if _URL.match(text):
        return "pip", text  # an archive or wheel URL: the installer fetches it
    path = Path(text).expanduser()
    if path.is_dir():
        return "local", str(_package_folder(path))
    if _looks_like_path(text):
        if path.exists():
            raise PackageError(
                f"{text!r} is a file; a local package is the folder holding its pyproject.toml, setup.py or setup.cfg"
            )
        raise DataNotFoundError(
            f"no folder at {text!r} ({path.resolve()}): a package is an existing package folder, a git URL or a "
            "pip requirement like 'numpy>=1.26'"
        )
    return "pip", text


def _package_folder(path: Path) -> Path:
    folder = path.resolve()
    if not any((folder / name).is_file() for name in PACKAGE_FILES):
        raise PackageError(
            f"{folder} is not a Python package folder: it has none of {', '.join(PACKAGE_FILES)}; add a "
            "pyproject.toml (with a [project] name) or give the folder that has one"
        )
    return folder


def packages_from(reqs: str | os.PathLike[str] | Package | Sequence[str | os.PathLike[str] | Package]) -> list[Package]:
    """``reqs`` as packages: one string, path or package is one package (a string is never split into letters).

    Raises:
        TypeError: ``reqs`` or an item of it is not a string, path or package.
    """
    if isinstance(reqs, (str, os.PathLike, Package)):
        reqs = [reqs]
    if not isinstance(reqs, Sequence):
        raise TypeError(f"packages are a list like ['numpy>=1.26', rh.package('./my_pkg')], not {type(reqs).__name__}")
    packages = []
    for req in reqs:
        if not isinstance(req, (str, os.PathLike, Package)):
            raise TypeError(
                f"each package is a string (a path, git URL or pip requirement) or rh.package(...), not {req!r}"
            )
        packages.append(req if isinstance(req, Package) else Package(req))
    return packages


def package(
    path: str | os.PathLike[str] | None = None,
    name: str | None = None,
    dryrun: bool = False,
) -> Package:
    """A package to install on a cluster: a local package folder, a git URL or a pip requirement.

    A string that is an existing folder is a local package (it needs pyproject.toml, setup.py or setup.cfg);
    a git URL (``git+https://...``, ``https://...git``, ``git@host:org/repo.git``, each optionally ``@ref``) is
    cloned and installed on the cluster; anything else that does not look like a path is a pip requirement.
    Called with only a name, loads the package saved under it.

    Example::

        rh.package("./my_pkg").to(gpu, env=my_env)              # synced and installed editable
        gpu.install_packages(["numpy>=1.26", "git+https://github.com/org/repo.git@v1"])
        rh.package(path="./my_pkg", name="my_pkg").save(); rh.package(name="my_pkg")

    Raises:
        DataNotFoundError: ``path`` looks like a path but nothing is there.
        PackageError: a folder without pyproject.toml/setup.py/setup.cfg, or a command-line option.
    """
    if path is None:
        if name is None:
            raise TypeError("rh.package needs a path, git URL or pip requirement, or the name of a saved package")
        from runhouse.resources.resource import load_typed

        return load_typed(Package, name, dryrun=dryrun)
    return Package(path, name=name)
