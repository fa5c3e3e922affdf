"""Envs on the daemon: their virtual environments and their worker processes.

An env is a name, a list of requirements and environment variables. The default env runs in the daemon's
own interpreter. An env with requirements gets a virtual environment under ``~/.rh/envs/<hash of reqs>``,
shared by every env with the same requirements so a second one installs nothing; it sees the daemon's
packages (runhouse among them) after its own. The venv is made in the daemon's process, and requirements that
uv's cache holds are installed from it alone (linked, no network: an unpinned requirement gets the cached
version; pin one to get another), else from the package index. Packages (a package folder here, installed
editable; a git URL; a pip requirement) can be installed into an env's interpreter later
(:func:`install_packages`); each interpreter records what it got, so an unchanged package is not installed
again. Each env has one main worker (its named objects live there) and a pool of extra workers, started on
first use, that ``map``/``starmap`` fan out over.

:class:`EnvRuntime` has the daemon's :class:`~runhouse.server.backend.WorkerBackend` place and make its
workers (local processes, :class:`~runhouse.server.channel.WorkerChannel`, on a single-node cluster;
every node's CPUs on a multi-node one), restarts its main worker after a crash, enforces the env's memory
limit, and answers which workers a ``map`` spreads over (:meth:`EnvRuntime.fanout_workers`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import site
import sys
import time
import venv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runhouse.errors import BadRequestError, EnvCreationError
from runhouse.paths import envs_dir, write_atomic
from runhouse.protocol import PACKAGE_FILES, object_name_problem
from runhouse.server.backend import Role, Slot, WorkerBackend, WorkerHandle

_READY_MARKER = ".rh-ready"
_PACKAGE_RECORD = ".rh-packages.json"
_INSTALL_TAIL_LINES = 15

Progress = Callable[[str], None]
# How often worker memory is checked against an env's limit.
MEMORY_CHECK_INTERVAL_S = 0.1
# A worker that dies younger than this is restarted on the next call, not at once (no crash loops).
MIN_UPTIME_FOR_EAGER_RESTART_S = 1.0
# Items of a map each pool worker runs at once (one computing while the next one's data moves), and that the
# main worker runs at once for a stateful object (on its threads).
POOL_SLOTS_PER_WORKER = 2
MAIN_SLOTS = 32


@dataclass(frozen=True)
class EnvSpec:
    """What defines an env on the daemon."""

    name: str
    reqs: tuple[str, ...] = ()
    env_vars: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    memory_limit_mb: int | None = None
    node: int | str | None = None  # the node it runs on: an index into the cluster's ips, or an ip
    compute: tuple[tuple[str, float], ...] = ()  # resources its main worker holds (and that place it): GPU, CPU, ...

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvSpec:
        """The env spec a client sent (or the registry kept), every field checked before anything uses it.

        ``name`` is an object name; ``reqs`` a list of requirement strings (a single string is refused, never
        split into letters); ``env_vars`` maps names (not empty, no ``=``) to string values; neither has NUL
        or text the OS cannot encode; ``memory_limit_mb`` is a positive whole number or None; ``node`` an index
        (0 is the head) or an ip; ``compute`` maps resource names (``"GPU"``, ``"CPU"``, ``"memory"``, custom
        ones) to positive amounts.

        Raises:
            BadRequestError: a field is missing, unknown, or of the wrong type or value; says which and how to
                fix it.
        """
        if not isinstance(data, Mapping):
            raise BadRequestError(f"an env spec is a mapping like {{'name': 'my_env'}}, not {type(data).__name__}")
        unknown = sorted(set(data) - set(_SPEC_FIELDS))
        if unknown:
            raise BadRequestError(f"unknown env spec fields {unknown}; an env spec has {', '.join(_SPEC_FIELDS)}")
        if "name" not in data:
            raise BadRequestError("an env spec needs a 'name'")
        name = data["name"]
        problem = object_name_problem(name) or _os_text_problem(name)
        if problem is not None:
            raise BadRequestError(f"env name {name!r} is not allowed: {problem}")
        return cls(
            name=name,
            reqs=_checked_reqs(data.get("reqs")),
            env_vars=_checked_env_vars(data.get("env_vars")),
            memory_limit_mb=_checked_memory_limit(data.get("memory_limit_mb")),
            node=_checked_node(data.get("node")),
            compute=_checked_compute(data.get("compute")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reqs": list(self.reqs),
            "env_vars": dict(self.env_vars),
            "memory_limit_mb": self.memory_limit_mb,
            "node": self.node,
            "compute": dict(self.compute),
        }


_SPEC_FIELDS = ("name", "reqs", "env_vars", "memory_limit_mb", "node", "compute")


def _os_text_problem(text: str) -> str | None:
    """Why ``text`` cannot be an argument or environment variable of a process, or None when it can."""
    if "\x00" in text:
        return "it contains a NUL character"
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return "it contains characters that cannot be encoded (a lone surrogate?)"
    return None


def _checked_reqs(reqs: Any) -> tuple[str, ...]:
    if reqs is None:
        return ()
    if isinstance(reqs, str):
        raise BadRequestError(
            f"reqs must be a list of requirements, not the string {reqs!r}: send [{reqs!r}] "
            "(a string is never split into letters)"
        )
    if not isinstance(reqs, (list, tuple)):
        raise BadRequestError(f"reqs must be a list of requirements like ['numpy>=1.26'], not {type(reqs).__name__}")
    for req in reqs:
        if not isinstance(req, str) or not req.strip():
            raise BadRequestError(f"each requirement is a non-empty string like 'numpy>=1.26', not {req!r}")
        problem = _requirement_problem(req)
        if problem is not None:
            raise BadRequestError(f"requirement {req!r} is not allowed: {problem}")
    return tuple(reqs)


def _requirement_problem(req: str) -> str | None:
    """Why ``req`` cannot go to the installer as one argument, or None when it can."""
    if req.lstrip().startswith("-"):
        return "it is a command-line option, not a requirement (installer options are not accepted)"
    return _control_character_problem(req) or _os_text_problem(req)


def _control_character_problem(text: str) -> str | None:
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        return "it contains control characters"
    return None


def _checked_env_vars(env_vars: Any) -> tuple[tuple[str, str], ...]:
    if env_vars is None:
        return ()
    if not isinstance(env_vars, Mapping):
        raise BadRequestError(
            f"env_vars must be a mapping of names to values like {{'MODE': 'prod'}}, not {type(env_vars).__name__}"
        )
    for key, value in env_vars.items():
        if not isinstance(key, str) or not key:
            raise BadRequestError(f"env var names are non-empty strings, not {key!r}")
        problem = "it contains '='" if "=" in key else _os_text_problem(key)
        if problem is not None:
            raise BadRequestError(f"env var name {key!r} is not allowed: {problem}")
        if not isinstance(value, str):
            raise BadRequestError(
                f"env var {key!r} has the {type(value).__name__} value {value!r}; values are strings, "
                f"like {str(value)!r}"
            )
        problem = _os_text_problem(value)
        if problem is not None:
            raise BadRequestError(f"the value of env var {key!r} is not allowed: {problem}")
    return tuple(sorted(env_vars.items()))


def _checked_memory_limit(limit: Any) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise BadRequestError(f"memory_limit_mb must be a positive whole number of MiB or null, not {limit!r}")
    return limit


def _checked_node(node: Any) -> int | str | None:
    if node is None:
        return None
    if isinstance(node, bool) or not isinstance(node, (int, str)):
        raise BadRequestError(f"node must be an index into the cluster's ips (0 is the head) or an ip, not {node!r}")
    if isinstance(node, int) and node < 0:
        raise BadRequestError(f"node={node}: node indexes start at 0 (the head)")
    if isinstance(node, str) and (not node.strip() or _control_character_problem(node)):
        raise BadRequestError(f"node={node!r}: name a node by its ip (like '10.0.0.6') or its index")
    return node


def _checked_compute(compute: Any) -> tuple[tuple[str, float], ...]:
    if compute is None:
        return ()
    if not isinstance(compute, Mapping):
        raise BadRequestError(f"compute must map resource names to amounts like {{'GPU': 1}}, not {compute!r}")
    for name, amount in compute.items():
        if not isinstance(name, str) or not name or _control_character_problem(name):
            raise BadRequestError(f"compute resource names are non-empty strings like 'GPU', not {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < float("inf"):
            raise BadRequestError(f"compute[{name!r}] must be a positive number, not {amount!r}")
    return tuple(sorted((name, float(amount)) for name, amount in compute.items()))


@dataclass(frozen=True)
class PackageInstall:
    """One package to install into an env's interpreter: a package folder on this machine (``local``, installed
    editable), a git URL (``git``, as ``git+<url>[@ref]``) or a pip requirement (``pip``). ``version`` is a
    hash of a folder's files, so an unchanged folder is not installed again."""

    kind: str
    target: str
    version: str = ""

    @classmethod
    def from_dict(cls, data: Any) -> PackageInstall:
        """The package a client sent, checked: its kind, a target that is never an option, a local target that is
        an absolute path to a package folder here.

        Raises:
            BadRequestError: says which field is wrong and how to fix it.
        """
        if not isinstance(data, Mapping) or set(data) - {"kind", "target", "version"}:
            raise BadRequestError(f"a package is {{'kind': ..., 'target': ..., 'version': ...}}, not {data!r}")
        kind, target, version = data.get("kind"), data.get("target"), data.get("version", "")
        if kind not in ("local", "git", "pip"):
            raise BadRequestError(f"a package's kind is 'local', 'git' or 'pip', not {kind!r}")
        if not isinstance(target, str) or not target.strip() or not isinstance(version, str):
            raise BadRequestError(f"a package's target and version are strings, not {target!r} and {version!r}")
        problem = _requirement_problem(target)
        if problem is not None:
            raise BadRequestError(f"package {target!r} is not allowed: {problem}")
        if kind == "git" and not target.startswith("git+"):
            raise BadRequestError(f"a git package is a requirement like 'git+https://host/org/repo.git', not "
                                  f"{target!r}")
        if kind == "local":
            folder = Path(target)
            if not folder.is_absolute() or not folder.is_dir():
                raise BadRequestError(f"no package folder at {target!r} on this cluster (an absolute path is needed)")
            if not any((folder / name).is_file() for name in PACKAGE_FILES):
                raise BadRequestError(f"{target} is not a Python package folder: it has none of "
                                      f"{', '.join(PACKAGE_FILES)}")
        return cls(kind, target, version)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.target}"


def _venv_key(reqs: tuple[str, ...]) -> str:
    ident = json.dumps({"reqs": sorted(reqs), "python": sys.version, "prefix": sys.prefix})
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _uv() -> str | None:
    """The uv binary, or None when uv is not installed (pip is used then)."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return None


def _installer(python: str, reqs: Sequence[str], editable: Sequence[str] = (), offline: bool = False) -> list[str]:
    """The argv installing ``reqs`` (each one argument) and the folders ``editable`` into ``python``; with
    ``offline``, from uv's cache only (never the network)."""
    targets = [*reqs, *(arg for folder in editable for arg in ("--editable", folder))]
    uv = _uv()
    if uv is not None:
        return [uv, "pip", "install", "--python", python, *(["--offline"] if offline else []), *targets]
    return [sys.executable, "-m", "pip", "--python", python, "install", "--progress-bar", "off", *targets]


async def _install_reqs(python: str, reqs: Sequence[str], env: str, progress: Progress) -> tuple[int, list[str]]:
    """Install ``reqs`` into ``python``: from uv's cache alone when it has them all (no network, files linked
    from the cache), else from the package index."""
    if _uv() is not None:
        code, lines = await _run_streaming(_installer(python, reqs, offline=True), _ignore)
        if code == 0:
            for line in lines:
                progress(line)
            return code, lines
        progress(f"env {env!r}: not all in uv's cache; installing from the package index")
    return await _run_streaming(_installer(python, reqs), progress)


def _ignore(_: str) -> None:
    pass


def _make_venv(path: Path) -> None:
    """A virtual environment at ``path`` on the daemon's Python, without pip (made in this process: no
    interpreter to start)."""
    venv.EnvBuilder(symlinks=os.name != "nt", with_pip=False).create(path)


async def _run_streaming(cmd: list[str], progress: Progress) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL
    )
    lines: list[str] = []
    assert proc.stdout is not None
    async for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        lines.append(line)
        progress(line)
    return await proc.wait(), lines


_venv_locks: dict[str, asyncio.Lock] = {}


async def ensure_python(spec: EnvSpec, progress: Progress) -> str:
    """The interpreter for ``spec``: the daemon's own without reqs, else a cached venv with them installed.

    Raises:
        EnvCreationError: installing the requirements failed; nothing is left behind.
    """
    if not spec.reqs:
        return sys.executable
    key = _venv_key(spec.reqs)
    path = envs_dir() / key
    python = str(path / "bin" / "python")
    async with _venv_locks.setdefault(key, asyncio.Lock()):
        if (path / _READY_MARKER).exists():
            progress(f"env {spec.name!r}: requirements already installed ({key})")
            return python
        shutil.rmtree(path, ignore_errors=True)  # a half-made venv from an interrupted attempt
        progress(f"env {spec.name!r}: creating virtual environment {path}")
        try:
            try:
                await asyncio.get_running_loop().run_in_executor(None, _make_venv, path)
            except OSError as exc:
                raise EnvCreationError(f"could not create a virtual environment for env {spec.name!r}: {exc}") from exc
            _link_daemon_packages(Path(python))
            progress(f"env {spec.name!r}: installing {', '.join(spec.reqs)}")
            code, lines = await _install_reqs(python, spec.reqs, spec.name, progress)
            if code != 0:
                tail = "\n".join(lines[-_INSTALL_TAIL_LINES:])
                named = [r for r in spec.reqs if _req_name(r) in tail.lower()] or list(spec.reqs)
                raise EnvCreationError(
                    f"env {spec.name!r}: could not install {', '.join(named)}; check the requirement names "
                    f"and versions.\n{tail}"
                )
            (path / _READY_MARKER).touch()
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
    progress(f"env {spec.name!r}: ready")
    return python


_install_locks: dict[str, asyncio.Lock] = {}


def _package_record(python: str) -> Path:
    """The file listing the packages installed into ``python``: in its venv, or for the daemon's own
    interpreter in the envs folder (never in the daemon's installation)."""
    if python == sys.executable:
        return envs_dir() / f"daemon-{hashlib.sha256(sys.prefix.encode()).hexdigest()[:16]}.packages.json"
    return Path(python).parent.parent / _PACKAGE_RECORD


async def install_packages(
    python: str, packages: Sequence[PackageInstall], env: str, progress: Progress
) -> list[PackageInstall]:
    """Install ``packages`` into the interpreter ``python`` in one installer run; returns the ones installed.

    A local folder or pip requirement installed before (the folder with the same files) is skipped; a git URL is
    always handed to the installer (its branch may have moved). Installs into one interpreter run one at a time.

    Raises:
        EnvCreationError: the installer failed (nothing is recorded as installed); carries its last lines.
    """
    async with _install_locks.setdefault(python, asyncio.Lock()):
        record_path = _package_record(python)
        record = _read_record(record_path)
        wanted = [p for p in dict.fromkeys(packages) if p.kind == "git" or record.get(p.key) != p.version]
        if not wanted:
            progress(f"env {env!r}: {', '.join(p.target for p in packages)} already installed")
            return []
        progress(f"env {env!r}: installing {', '.join(p.target for p in wanted)}")
        reqs = [p.target for p in wanted if p.kind != "local"]
        code, lines = await _run_streaming(
            _installer(python, reqs, [p.target for p in wanted if p.kind == "local"]), progress
        )
        if code != 0:
            tail = "\n".join(lines[-_INSTALL_TAIL_LINES:])
            raise EnvCreationError(
                f"env {env!r}: could not install {', '.join(p.target for p in wanted)}; nothing was installed. "
                f"Check the package names, versions, URLs and folders.\n{tail}"
            )
        record.update({p.key: p.version for p in wanted if p.kind != "git"})
        record_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(record_path, json.dumps(record, indent=1))
    progress(f"env {env!r}: installed {', '.join(p.target for p in wanted)}")
    return wanted


def _read_record(path: Path) -> dict[str, str]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: everything counts as not installed
        return {}
    return record if isinstance(record, dict) else {}


def _req_name(req: str) -> str:
    for sep in "[<>=!~; ":
        req = req.split(sep, 1)[0]
    return req.strip().lower()


def _link_daemon_packages(python: Path) -> None:
    """Let the venv see the daemon's packages (runhouse and its dependencies) after its own."""
    purelib = next((python.parent.parent / "lib").glob("python*/site-packages"))
    dirs = [p for p in site.getsitepackages() if os.path.isdir(p)]
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    (purelib / "_runhouse_daemon_packages.pth").write_text(lines)


class EnvRuntime:
    """The workers of one env, placed and made by the daemon's ``backend`` (by default local processes)."""

    def __init__(self, spec: EnvSpec, python: str, backend: WorkerBackend) -> None:
        self.spec, self.python = spec, python
        self.main: WorkerHandle | None = None
        self.pool: list[tuple[Slot, WorkerHandle]] = []
        self._pool_nodes = -1  # the backend's nodes_version the pool was laid out for
        self._backend = backend
        self.on_main_exit: Callable[[EnvRuntime], None] | None = None
        # Called with (env name, role) for every worker that exits on its own (a crash, a kill): it is replaced.
        self.on_worker_exit: Callable[[str, str], None] | None = None
        self.restarts: dict[str, int] = {"main": 0, "pool": 0}  # such exits, by role
        self._lock = asyncio.Lock()
        self._closing = False
        self._watchdog: asyncio.Task | None = None
        if spec.memory_limit_mb:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_memory(spec.memory_limit_mb))

    async def _watch_memory(self, limit_mb: int) -> None:
        limit = limit_mb * 2**20
        while not self._closing:
            for worker in self.workers():
                used = await asyncio.get_running_loop().run_in_executor(None, worker.memory) if worker.alive else 0
                if used > limit:
                    worker.kill(f"used {used / 2**20:.0f} MiB, over the env's memory limit of {limit_mb} MiB")
            await asyncio.sleep(MEMORY_CHECK_INTERVAL_S)

    def _new_worker(self, role: Role, slot: Slot) -> WorkerHandle:
        return self._backend.worker(self.spec, self.python, role, self._worker_exited, slot)

    async def main_worker(self) -> WorkerHandle:
        """The env's main worker, started (or restarted after a crash) when needed."""
        main = self.main
        if main is not None and main.alive:
            return main
        async with self._lock:
            if self.main is None or not self.main.alive:
                layout = await self._backend.layout(self.spec)
                worker = self._new_worker("main", layout.main)
                await worker.start()
                self.main = worker
            return self.main

    async def _pool_workers(self) -> list[WorkerHandle]:
        """The env's pool of extra workers, started on first use; dead ones are replaced where the nodes alive
        now have room (a lost node's share moves to the others)."""
        if self._pool_ready():
            return [w for _, w in self.pool]
        async with self._lock:
            if not self._pool_ready():
                self._pool_nodes = self._backend.nodes_version
                wanted = list((await self._backend.layout(self.spec)).pool)
                kept = []
                for slot, worker in self.pool:
                    if worker.alive and slot in wanted:
                        wanted.remove(slot)
                        kept.append((slot, worker))
                dropped = [w for _, w in self.pool if not any(w is k for _, k in kept)]
                fresh = [(slot, self._new_worker("pool", slot)) for slot in wanted]
                self.pool = kept + fresh  # before starting: stop() reaches them even while they start
                await asyncio.gather(*(w.stop() for w in dropped), *(w.start() for _, w in fresh))
            return [w for _, w in self.pool]

    def _pool_ready(self) -> bool:
        current = self._pool_nodes == self._backend.nodes_version
        return bool(self.pool) and current and all(w.alive for _, w in self.pool)

    async def fanout_workers(self, stateful: bool) -> tuple[list[WorkerHandle], int]:
        """The workers a ``map`` spreads its items over, and how many items each runs at once.

        A stateful object (a class or an instance) lives only in the main worker; a function runs on the
        pool. Dead workers are replaced: a map that finds one of its workers dead asks again.
        """
        if stateful:
            return [await self.main_worker()], MAIN_SLOTS
        return await self._pool_workers(), POOL_SLOTS_PER_WORKER

    def _worker_exited(self, worker: WorkerHandle) -> None:
        if self._closing:
            return
        role = "main" if worker is self.main else "pool"
        self.restarts[role] += 1
        if self.on_worker_exit is not None:
            self.on_worker_exit(self.spec.name, role)
        if worker is self.main:
            if self.on_main_exit is not None:
                self.on_main_exit(self)
            if time.time() - worker.started_at >= MIN_UPTIME_FOR_EAGER_RESTART_S:
                asyncio.get_running_loop().create_task(self._restart_main())

    async def _restart_main(self) -> None:
        try:
            await self.main_worker()
        except OSError as exc:  # the next call will try again and report it
            print(f"runhouse: could not restart the main worker of env {self.spec.name!r}: {exc}", file=sys.stderr)

    def workers(self) -> list[WorkerHandle]:
        """Every worker of the env made so far, main first, dead ones included."""
        return ([self.main] if self.main else []) + [w for _, w in self.pool]

    async def stop(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        await asyncio.gather(*(w.stop() for w in self.workers()))
