"""The face of runhouse accounts: logging in to Den and out, and syncing settings and secrets with it.

This module sits above the naming layer and the settings file: :mod:`runhouse.rns.den_client` only talks to
Den, :mod:`runhouse.config` only keeps the local settings file, :mod:`runhouse.resources.secret` only
stores and writes secrets; logging in is where the three meet.
"""

from __future__ import annotations

import getpass
from typing import Any

from runhouse.config import LOCAL_ONLY_SETTINGS, Configs
from runhouse.errors import ConfigError
from runhouse.prompts import ask_yes_no
from runhouse.rns.den_client import check_token, den_client


class SyncedConfigs(Configs):
    """The settings file (see :class:`~runhouse.config.Configs`), plus syncing its defaults with Den.

    Example::

        rh.configs.set("default_autostop", 30)
        rh.configs.upload_defaults()      # on another machine: rh.configs.download_defaults()
    """

    def upload_defaults(self) -> dict[str, Any]:
        """Store these settings in Den for the logged-in user (all but the token and Den's URL)."""
        keep = {k: v for k, v in self.to_dict().items() if k not in LOCAL_ONLY_SETTINGS}
        return den_client().put_defaults(keep)

    def download_defaults(self) -> dict[str, Any]:
        """Set the settings the logged-in user stored in Den (validated like ``set``); returns them."""
        defaults = {k: v for k, v in den_client().get_defaults().items() if k not in LOCAL_ONLY_SETTINGS}
        for key, value in defaults.items():
            self.set(key, value)
        return defaults


# ``rh.configs``: the user's settings (read from disk on every use, so every instance agrees).
configs = SyncedConfigs()


def login(
    token: str | None = None,
    den_url: str | None = None,
    interactive: bool = False,
    upload_defaults: bool = False,
    download_defaults: bool = False,
    upload_secrets: bool = False,
    download_secrets: bool = False,
) -> str:
    """Log in to Den: check the token, save it with Den's URL and the user name in ``~/.rh/config.yaml``.

    Afterwards bare names save to the user's Den folder (``@/...``); ``~/...`` still saves locally.
    ``interactive`` asks for what is missing and offers to upload or download config defaults and secrets
    (upload: the credentials found on this machine; download: stored ones, never replacing local files).

    Returns:
        The user name.
    """
    url = den_url or configs.get("den_url")
    if not url and interactive:
        url = input("Den URL (e.g. http://den.example.com:32400): ").strip()
    if not url:
        raise ConfigError("rh.login needs den_url= (the address of your Den)")
    if not token and interactive:
        token = getpass.getpass("Den token: ").strip()
    if not token:
        raise ConfigError("rh.login needs token= (runhouse den user add NAME prints one)")
    user = check_token(url, token)["name"]
    configs.set("den_url", url)
    configs.set("token", token)
    configs.set("username", user)
    if interactive:
        upload_defaults = upload_defaults or ask_yes_no("Upload your local config defaults to Den? [y/N] ")
        download_defaults = download_defaults or ask_yes_no("Download your config defaults from Den? [y/N] ")
    if interactive:
        from runhouse.resources.secret import Secrets

        found = Secrets.configured_providers()
        if found:
            upload_secrets = upload_secrets or ask_yes_no(
                f"Upload the credentials found here ({', '.join(found)}) to Den, encrypted? [y/N] ")
        download_secrets = download_secrets or ask_yes_no("Download your secrets from Den into this machine? [y/N] ")
    if download_defaults:
        configs.download_defaults()
    if upload_defaults:
        configs.upload_defaults()
    _sync_secrets(upload_secrets, download_secrets)
    return user


def _sync_secrets(upload: bool, download: bool) -> None:
    if not (upload or download):
        return
    from runhouse.resources.secret import Secrets

    if upload:
        Secrets.extract_and_upload()
    if download:
        Secrets.download_into_env()


def logout(interactive: bool = False, remove_secrets: bool = False) -> list[str]:
    """Forget the Den token and user name (Den's URL is kept for the next login).

    ``remove_secrets`` (or a yes at the ``interactive`` prompt) also deletes the providers' credential files
    from this machine. Returns the files removed.
    """
    from runhouse.resources.secret import Secrets

    configs.set("token", None)
    configs.set("username", None)
    found = Secrets.configured_providers()
    if interactive and found and not remove_secrets:
        remove_secrets = ask_yes_no(f"Also delete the local credential files of {', '.join(found)}? [y/N] ")
    return Secrets.remove_local() if remove_secrets else []

