"""The face of runhouse accounts: logging in to Den and out, and syncing settings and secrets with it.

This module sits above the naming layer and the settings file: :mod:`runhouse.rns.den_client` only talks to
Den, :mod:`runhouse.config` only keeps the local settings file, :mod:`runhouse.resources.secret` only
stores and writes secrets; logging in is where the three meet.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Any

from runhouse.config import LOCAL_ONLY_SETTINGS, Configs
from runhouse.errors import ConfigError
from runhouse.prompts import ask_yes_no
from runhouse.rns.den_client import check_token, current_user, den_client, user_of_token


class SyncedConfigs(Configs):
    """The settings file (see :class:`~runhouse.config.Configs`), plus syncing its defaults with Den.

    Example::

        rh.configs.set("default_autostop", 30)
        rh.configs.upload_defaults()      # on another machine: rh.configs.download_defaults()
    """

    def get(self, key: str, default: Any = None) -> Any:
        """As :meth:`Configs.get`, but ``username`` is the user really logged in (``RH_TOKEN``'s when it
        holds another token than the file's) and ``default_folder`` the folder bare names really resolve
        in (``/alice`` once logged in, when none is set)."""
        if key == "username":
            user = current_user()
            return default if user is None else user
        if key == "default_folder":
            from runhouse.errors import InvalidNameError
            from runhouse.rns import names, store

            folder = store.current_folder()
            try:
                return str(names.parse_folder(folder, username=current_user()))
            except InvalidNameError:  # "@/..." set while logged out: it resolves nowhere yet
                return folder
        return super().get(key, default)

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
    interactive: bool | None = None,
    upload_defaults: bool = False,
    download_defaults: bool = False,
    upload_secrets: bool = False,
    download_secrets: bool = False,
) -> str:
    """Log in to Den: check the token, save it with Den's URL and the user name in ``~/.rh/config.yaml``.

    Afterwards bare names save to the user's Den folder (``@/...``); ``~/...`` still saves locally.
    ``rh.login()`` with no token asks for what is missing when someone can answer (``interactive``, by
    default: stdin is a terminal, or this runs in a Jupyter or Colab kernel whose page takes input, where the
    token goes in a password box) and offers to upload or download config defaults and secrets (upload: the
    credentials found on this machine; download: stored ones, never replacing local files). Given a token
    (``rh.login(token=..., den_url=...)``: notebooks, scripts), it never asks anything. With ``RH_TOKEN`` set
    and no ``token=``, that token is checked and nothing is written: the environment is the login.

    Returns:
        The user name.

    Raises:
        ConfigError: a token or Den's URL is missing and nobody can be asked (no terminal; a kernel run
            headless, by nbclient or papermill); the message says how to pass them.
        AuthenticationError: Den does not know the token.
    """
    env_token = os.environ.get("RH_TOKEN")
    if interactive is None:
        interactive = not (token or env_token) and _can_ask()
    url = den_url or configs.get("den_url")
    if not url and interactive:
        url = input("Den URL (e.g. http://den.example.com:32400): ").strip()
    if not url:
        raise ConfigError(
            "rh.login needs Den's address: rh.login(token=..., den_url='http://HOST:32400'), "
            "or set it once with rh.configs.set('den_url', ...) (the RH_DEN_URL variable works too)")
    if not token and env_token and not interactive:
        user = user_of_token(url, env_token)
        if den_url:
            configs.set("den_url", url)
        return user
    if not token and interactive:
        token = getpass.getpass("Den token: ").strip()
    if not token:
        raise ConfigError(
            "rh.login needs a token and nobody can be asked for one here (no terminal, or a notebook run "
            "headless): call rh.login(token=..., "
            "den_url=...), run `runhouse login` in a terminal, or set RH_TOKEN in the environment "
            "(an administrator makes tokens with `runhouse den user add NAME`)")
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


def _can_ask() -> bool:
    """Whether questions reach a person: in a Jupyter or Colab kernel, when the page running the cell takes
    input (headless runners such as nbclient do not, and there ``input()`` would fail); elsewhere, when stdin
    is a terminal."""
    ipython = sys.modules.get("IPython")
    kernel = getattr(ipython.get_ipython(), "kernel", None) if ipython is not None else None
    if kernel is not None:
        return bool(getattr(kernel, "_allow_stdin", False))
    return sys.stdin is not None and not sys.stdin.closed and sys.stdin.isatty()


def _sync_secrets(upload: bool, download: bool) -> None:
    if not (upload or download):
        return
    from runhouse.resources.secret import Secrets

    if upload:
        Secrets.extract_and_upload()
    if download:
        Secrets.download_into_env()


def logout(
    interactive: bool = False, remove_secrets: bool | None = None, delete_den_secrets: bool | None = None
) -> list[str]:
    """Forget the Den token and user name (Den's URL is kept for the next login).

    ``delete_den_secrets`` first deletes this user's secrets stored in Den; ``remove_secrets`` deletes the
    providers' credential files from this machine. Left as None, each is asked at the ``interactive`` prompt
    (which lists what would go), else not done. Returns the files removed.
    """
    from runhouse.resources.secret import Secrets

    if delete_den_secrets or (delete_den_secrets is None and interactive):
        _delete_den_secrets(ask=delete_den_secrets is None)
    configs.set("token", None)
    configs.set("username", None)
    found = Secrets.configured_providers()
    if remove_secrets is None and interactive and found:
        remove_secrets = ask_yes_no(f"Also delete the local credential files of {', '.join(found)}? [y/N] ")
    return Secrets.remove_local() if remove_secrets else []


def _delete_den_secrets(ask: bool) -> None:
    """Delete the logged-in user's secrets in Den, after a yes when ``ask``; nothing when not logged in."""
    from runhouse.resources.secret import DenSecretStore

    if not (configs.get("den_url") and configs.get("token")):
        return
    store = DenSecretStore()
    stored = sorted(store.names())
    if not stored:
        return
    if ask and not ask_yes_no(f"Also delete your secrets stored in Den ({', '.join(stored)})? [y/N] "):
        return
    for name in stored:
        store.delete(name)
