"""A cluster's disk reached over SSH: :class:`SSHSystem`, what an SSH cluster gives from ``data_system()``.

Operations run the ops script (:mod:`runhouse.resources.data._ops`, copied to the host once) with the
host's own ``python3``, so runhouse need not be installed there; files move with rsync (only what changed,
resumable).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import shlex
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runhouse.errors import RunhouseError
from runhouse.resources.data import _ops
from runhouse.resources.data.base import Advance, DataSystem, no_progress, transfer
from runhouse.resources.data.posix import OPERATION_TIMEOUT_S, FileSystem, PosixSystem

if TYPE_CHECKING:
    from runhouse.resources.clusters.ssh import SSHCluster
    from runhouse.transport.ssh import SSHCredentials

TRANSFER_TIMEOUT_S = 6 * 3600.0  # one rsync run
_PROGRESS_POLL_S = 0.5
_OPS_SCRIPT_DIR = ".cache/runhouse/ops"
_SCRIPTS: dict[SSHCredentials, str] = {}  # host -> where its copy of the ops script is


class SSHSystem(PosixSystem):
    """A cluster's disk reached over its SSH connection: operations run the ops script on the host (copied
    there once), and files move with rsync (only what changed; resumable)."""

    kind = "cluster"
    resumes = True

    def __init__(self, cluster: SSHCluster) -> None:
        self.cluster = cluster

    def describe(self) -> str | dict[str, Any]:
        return self.cluster.rns_address or self.cluster.config()

    def same_storage(self, other: DataSystem) -> bool:
        return isinstance(other, SSHSystem) and other.cluster.creds == self.cluster.creds

    def _script_path(self) -> str:
        """The path (relative to the remote home) of the ops script on the host, copied there on first use."""
        host = self.cluster.creds
        if host not in _SCRIPTS:
            source = Path(_ops.__file__).read_bytes()
            digest = hashlib.sha256(source).hexdigest()[:16]
            script = f"{_OPS_SCRIPT_DIR}/data_ops-{digest}.py"
            command = (
                f"test -f {script} || {{ mkdir -p {_OPS_SCRIPT_DIR} && cat > {script}.$$ && mv {script}.$$ {script}; }}"
            )
            self.cluster.ssh_connection.run(command, input=source, timeout=OPERATION_TIMEOUT_S, check=True)
            _SCRIPTS[host] = script
        return _SCRIPTS[host]

    def _op(self, name: str, *args: Any) -> Any:
        # -I -S: no site-packages or user environment to import, which halves the interpreter's start.
        command = f"python3 -I -S {self._script_path()} {name} {shlex.quote(json.dumps(list(args)))}"
        result = self.cluster.ssh_connection.run(command, timeout=OPERATION_TIMEOUT_S)
        try:
            answer = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise RunhouseError(
                f"the data operation {name!r} failed on {self.cluster.host} (exit code {result.returncode}); "
                f"is python3 installed there?\n{result.stderr[-2000:]}"
            ) from None
        if "error" in answer:
            error_type = _REMOTE_ERRORS.get(answer["error"], OSError)
            raise error_type(answer["message"])
        return _decode(answer["ok"])

    # File contents travel by rsync through a temporary file here: binary-safe, fast, and atomic on writes.
    def read(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        with tempfile.TemporaryDirectory(prefix="rh-read-") as here:
            local = os.path.join(here, "file")
            transfer(self, path, FileSystem(), local, single_file=True, progress=False)
            with open(local, "rb") as f:
                f.seek(offset)
                return f.read(length)

    def write(self, path: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="rh-write-") as here:
            local = os.path.join(here, "file")
            Path(local).write_bytes(data)
            transfer(FileSystem(), local, self, path, single_file=True, progress=False)

    def download(self, root: str, files: Mapping[str, int], local_root: str, advance: Advance) -> None:
        os.makedirs(local_root, exist_ok=True)
        measure = functools.partial(_local_tree_size, local_root)
        with _polled(measure, advance):
            self.cluster.ssh_connection.rsync(
                f"{_rsync_path(root)}/",
                f"{local_root}/",
                files_from=list(files),
                upload=False,
                timeout=TRANSFER_TIMEOUT_S,
            )

    def upload(self, local_root: str, files: Mapping[str, int], root: str, advance: Advance) -> None:
        # rsync makes only the last folder of its destination; the shell makes the rest without starting python.
        command = f"mkdir -p {shlex.quote(_rsync_path(root))}"
        self.cluster.ssh_connection.run(command, timeout=OPERATION_TIMEOUT_S, check=True)
        measure = functools.partial(self._tree_size, root)
        with _polled(measure, advance):
            self.cluster.ssh_connection.rsync(
                f"{local_root}/", f"{_rsync_path(root)}/", files_from=list(files), timeout=TRANSFER_TIMEOUT_S
            )

    def _tree_size(self, root: str) -> int:
        return sum(self.walk(root).values()) if self.exists(root) else 0


# The builtin errors the ops script reports by name, re-raised here as themselves.
_REMOTE_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError, KeyError)
}


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def _rsync_path(path: str) -> str:
    """A remote path as rsync takes it: relative paths (and ``~/...``) are relative to the home folder."""
    if path in ("", "~", "~/"):
        return "."
    return path[2:] if path.startswith("~/") else path


def _local_tree_size(root: str) -> int:
    total = 0
    for parent, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # rsync renames its temporary files as it goes
                total += os.path.getsize(os.path.join(parent, name))
    return total


@contextlib.contextmanager
def _polled(measure: Callable[[], int], advance: Advance) -> Iterator[None]:
    """Report progress of a transfer that cannot report it itself by measuring its destination."""
    if advance is no_progress:
        yield
        return
    reported = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal reported
        while not done.wait(_PROGRESS_POLL_S):
            with contextlib.suppress(OSError, RunhouseError):
                now = measure()
                if now > reported:
                    advance(now - reported)
                    reported = now

    thread = threading.Thread(target=poll, daemon=True, name="rh-transfer-progress")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    total = measure()
    if total > reported:
        advance(total - reported)
