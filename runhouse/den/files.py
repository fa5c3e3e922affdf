"""Den's files on this machine, all under ``<config dir>/den/`` (folders 0700, files 0600)::

    secret.key           the key that seals stored secrets (:mod:`runhouse.den.crypto`)
    admin_token          the administrator's token, made at Den's first start (``runhouse den user add`` reads it)
    den.sqlite           the database, unless ``--db`` names another
    servers/<port>.json  the Den serving on <port>: pid, start time, URL, database (written by ``den serve``,
                         removed when it exits), so that the admin commands find it and ``den stop`` stops it
    servers/<port>.log   the output of a Den started with ``den serve --detach``

The secret files are created with :func:`ensure_private_file` and read with :func:`read_private_file`,
which refuses a file other users can read.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from runhouse.errors import ConfigError
from runhouse.paths import config_dir, write_atomic

ADMIN_TOKEN_FILE = "admin_token"


def den_folder() -> Path:
    """``<config dir>/den``, created with mode 0700 when missing."""
    folder = config_dir() / "den"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def default_admin_token_file() -> Path:
    """Where Den keeps its administrator's token unless told otherwise: ``<config dir>/den/admin_token``."""
    return den_folder() / ADMIN_TOKEN_FILE


def read_private_file(path: Path, what: str) -> str:
    """The stripped text of ``path``, a secret file (``what`` names it in errors).

    Raises:
        FileNotFoundError: there is no such file.
        ConfigError: other users may read it.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{what} {path} is readable by other users (mode {mode:o}): chmod 600 it")
    return path.read_text().strip()


def ensure_private_file(path: Path, what: str, make: Callable[[], str]) -> str:
    """The content of the secret file ``path``; when it is missing, ``make()`` is written to it first, with
    mode 0600 (its folder 0700). Of two processes creating it at once, both get the first one's content."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return read_private_file(path, what)
    with os.fdopen(fd, "w") as file:
        file.write(make())
    return read_private_file(path, what)


# ------------------------------------------------------------------------------------- running Dens


def server_record_file(port: int) -> Path:
    """The record of the Den serving on ``port`` (see the module docstring)."""
    return _servers_folder() / f"{port}.json"


def server_log_file(port: int) -> Path:
    """The output of the Den started on ``port`` with ``--detach``."""
    return _servers_folder() / f"{port}.log"


def _servers_folder() -> Path:
    folder = den_folder() / "servers"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


@dataclass(frozen=True)
class ServerRecord:
    """A Den process serving on ``port`` from this config folder, as it recorded itself."""

    port: int
    pid: int
    started: float
    """The process's start time (``psutil.Process.create_time``): a pid reused by another process differs."""
    url: str
    """Where clients on this machine reach it."""
    database: str
    """Its database, password hidden."""

    @classmethod
    def of_this_process(cls, port: int, url: str, database: str) -> ServerRecord:
        return cls(port, os.getpid(), psutil.Process().create_time(), url, database)

    def running(self) -> bool:
        """Whether the recorded process still runs (the same process, not a later one with its pid)."""
        try:
            process = psutil.Process(self.pid)
            return abs(process.create_time() - self.started) < 0.01 and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def read_server(port: int) -> ServerRecord | None:
    """The record of the Den on ``port`` if that Den still runs; a record left behind is removed."""
    path = server_record_file(port)
    try:
        record = ServerRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        record = None
    if record is not None and record.running():
        return record
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return None


def running_servers() -> list[ServerRecord]:
    """The Dens of this config folder that run now, by port."""
    ports = sorted(int(path.stem) for path in _servers_folder().glob("*.json") if path.stem.isdigit())
    return [record for record in map(read_server, ports) if record is not None]


def claim_server(record: ServerRecord) -> None:
    """Record that ``record``'s process serves on its port.

    Raises:
        ConfigError: a Den of this config folder already runs on that port (the message names it).
    """
    running = read_server(record.port)
    if running is not None and running.pid != record.pid:
        raise ConfigError(already_running(running))
    write_atomic(server_record_file(record.port), json.dumps(asdict(record)))


def release_server(record: ServerRecord) -> None:
    """Remove the record of ``record``'s port if it is still ``record`` (a later Den's is kept)."""
    path = server_record_file(record.port)
    with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
        if ServerRecord(**json.loads(path.read_text())) == record:
            path.unlink()


def stop_server(record: ServerRecord, timeout: float) -> None:
    """Stop ``record``'s Den (SIGTERM, then SIGKILL after ``timeout`` seconds) and remove its record."""
    from runhouse.lifetime import terminate_process

    terminate_process(record.pid, timeout)
    release_server(record)


def already_running(record: ServerRecord) -> str:
    """What to tell someone who starts a Den on ``record``'s port."""
    return (f"Den already runs on port {record.port} (pid {record.pid}, {record.url}, database "
            f"{record.database}); stop it first (`runhouse den stop --port {record.port}`) or use another --port")
