"""Where runhouse keeps its local state, and the defaults that locate the local daemon.

``RH_CONFIG_DIR`` moves the whole folder (default ``~/.rh``); ``RH_SERVER_PORT`` picks the port of the
daemon on this machine (default 32300).
"""

from __future__ import annotations

import os
from pathlib import Path

from runhouse.errors import ConfigError

DEFAULT_SERVER_PORT = 32300


def _config_dir_path() -> Path:
    """The runhouse folder's path, without creating it (reads must not leave folders behind)."""
    return Path(os.environ.get("RH_CONFIG_DIR") or Path.home() / ".rh").expanduser()


def config_dir() -> Path:
    """The runhouse folder (``$RH_CONFIG_DIR`` or ``~/.rh``), created with mode 0700 when missing."""
    path = _config_dir_path()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


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
    """State folder of the local daemon on ``port``: token, pid file, log, registry."""
    path = config_dir() / "daemons" / str(port)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def envs_dir() -> Path:
    """Folder of the virtual environments of envs with requirements, shared by all local daemons."""
    path = config_dir() / "envs"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
