"""Where runhouse keeps its local state, the defaults that locate the local daemon, and atomic file writes.

``RH_CONFIG_DIR`` moves the whole folder (default ``~/.rh``); ``RH_SERVER_PORT`` picks the port of the
daemon on this machine (default 32300).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

from runhouse.errors import ConfigError

DEFAULT_SERVER_PORT = 32300


def _config_dir_path() -> Path:
    """The runhouse folder's path, without creating it (reads must not leave folders behind)."""
    return config_dir_of(os.environ, Path.home())


def config_dir_of(environ: Mapping[str, str], home: Path | None = None) -> Path:
    """The runhouse folder a process with environment ``environ`` uses: ``$RH_CONFIG_DIR``, else ``.rh`` in
    ``home`` (default: its ``$HOME``).

    Raises:
        KeyError: neither ``RH_CONFIG_DIR`` nor a home folder is known.
    """
    if environ.get("RH_CONFIG_DIR"):
        return Path(environ["RH_CONFIG_DIR"]).expanduser()
    return (home or Path(environ["HOME"])) / ".rh"


def config_dir() -> Path:
    """The runhouse folder (``$RH_CONFIG_DIR`` or ``~/.rh``), created with mode 0700 when missing."""
    path = _config_dir_path()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def config_dir_id() -> str:
    """A random id of this runhouse folder (``id`` in it, made on first use), telling its daemons apart from
    those of another machine or account that a saved config also calls ``localhost``."""
    path = config_dir() / "id"
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(16))
    return path.read_text().strip()


def default_server_port() -> int:
    """Port of the daemon on this machine: ``$RH_SERVER_PORT`` or 32300."""
    raw = os.environ.get("RH_SERVER_PORT")
    if not raw:
        return DEFAULT_SERVER_PORT
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ConfigError(f"RH_SERVER_PORT={raw!r} is not a port number (1-65535)")
    return port


def daemon_dir(port: int) -> Path:
    """State folder of the local daemon on ``port``: token, pid file, log, registry.

    It and ``daemons/`` are owner-only (0700): created so, and made so if an older version left them open.
    """
    path = config_dir()
    for name in ("daemons", str(port)):
        path = path / name
        path.mkdir(mode=0o700, exist_ok=True)
        if stat.S_IMODE(path.stat().st_mode) != 0o700:
            path.chmod(0o700)
    return path


def envs_dir() -> Path:
    """Folder of the virtual environments of envs with requirements, shared by all local daemons."""
    path = config_dir() / "envs"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace the file at ``path`` with ``data`` so that readers see the old content or all of the new.

    The data goes to a uniquely named temporary file in the same folder (created with ``mode``, so it is
    never more readable than that), is flushed to disk, and is renamed over ``path``; the rename is then
    made durable. On any failure the temporary file is removed and ``path`` is left as it was.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX only; Windows cannot open folders)."""
    if sys.platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
