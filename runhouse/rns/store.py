"""Resource configs by address: one entry point that sends each address to the store that holds it.

``~/...`` goes to the local ``rh/`` folder, ``^name`` to the configs shipped inside the package
(read-only), ``@/...`` and ``/owner/...`` to Den. Bare names resolve in the current folder
(:func:`set_folder`; default: the ``default_folder`` config, else ``~``).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from runhouse.errors import InvalidNameError, ObjectNotFoundError, RunhouseError
from runhouse.rns import local_store, names
from runhouse.rns.names import BUILTIN, DEN, LOCAL, Address

_BUILTIN_PACKAGE = "runhouse.builtins"
_current_folder: str | None = None


def _username() -> str | None:
    from runhouse.rns.den_client import current_user

    return current_user()


def current_folder() -> str:
    """The folder bare names resolve in: the one set, else the ``default_folder`` config, else the logged-in
    user's Den folder (``@``), else ``~``."""
    if _current_folder is not None:
        return _current_folder
    from runhouse.config import configs

    saved = configs.to_dict()
    if saved.get("default_folder"):
        return str(saved["default_folder"])
    return "@" if configs.get("den_url") and _username() else "~"


def share(address: Address, users: list[str], access_level: str) -> dict[str, Any]:
    """Share a Den resource (or folder, and all under it) with users."""
    if address.store != DEN:
        raise InvalidNameError(f"{address} is not in Den: only Den resources (@/..., /owner/...) can be shared")
    if access_level not in ("read", "write"):
        raise ValueError(f"access_level must be 'read' or 'write', not {access_level!r}")
    return _den().share(str(address), users, access_level)


def unshare(address: Address, users: list[str]) -> dict[str, Any]:
    if address.store != DEN:
        raise InvalidNameError(f"{address} is not in Den: there is nothing to unshare")
    return _den().unshare(str(address), users)


def set_folder(folder: str) -> str:
    """Make ``folder`` (``~``, ``~/proj``, ``/owner/proj``, ...) the folder bare names resolve in."""
    global _current_folder
    _current_folder = str(names.parse_folder(folder, username=_username()))
    return _current_folder


def resolve(name: str) -> Address:
    """The full address of ``name`` (bare names resolve in the current folder)."""
    return names.parse(name, folder=current_folder(), username=_username())


def _den() -> Any:
    from runhouse.rns.den_client import den_client

    return den_client()


def save(address: Address, config: dict[str, Any]) -> bool:
    """Save a config; returns False when it was unchanged (nothing written)."""
    if address.store == LOCAL:
        return local_store.save(address.parts, config)
    if address.store == BUILTIN:
        raise InvalidNameError(f"{address} is a built-in config and cannot be overwritten; save under ~/ instead")
    den = _den()
    try:
        if den.get(str(address))["config"] == config:
            return False
    except ObjectNotFoundError:
        pass
    den.put(str(address), config)
    return True


def load(address: Address, version: str | None = None) -> dict[str, Any]:
    """The config at ``address`` (an older ``version`` when given).

    Raises:
        ObjectNotFoundError: nothing is saved there; the message names where the same name does exist
            (``~/x`` for a missing ``/alice/x``, and the other way round), if anywhere.
    """
    try:
        return _load(address, version)
    except ObjectNotFoundError as exc:
        other = _same_name_elsewhere(address) if version is None else None
        if other is None:
            raise
        raise ObjectNotFoundError(f"{exc}; but {other} exists: load it by that name, e.g. rh.load({other!r})") from None


def _same_name_elsewhere(address: Address) -> str | None:
    """The address of a saved config with ``address``'s name in the other store (local <-> the user's Den
    folder), or None. Asking Den is best-effort: this only adds a hint to an error."""
    user = _username()
    if address.store == DEN and user is not None and address.parts[:1] == (user,) and len(address.parts) > 1:
        local = Address(LOCAL, address.parts[1:])
        return str(local) if local_store.exists(local.parts) else None
    if address.store == LOCAL and user is not None:
        from runhouse.config import configs

        if not configs.get("den_url"):
            return None
        den = Address(DEN, (user, *address.parts))
        try:
            _den().get(str(den))
        except RunhouseError:
            return None
        return str(den)
    return None


def _load(address: Address, version: str | None) -> dict[str, Any]:
    if address.store == LOCAL:
        return local_store.load(address.parts, version)
    if address.store == BUILTIN:
        try:
            text = resources.files(_BUILTIN_PACKAGE).joinpath(f"{address.name}.json").read_text()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no built-in config named {address}") from None
        return json.loads(text)
    return _den().get(str(address), int(version) if version is not None else None)["config"]


def exists(address: Address) -> bool:
    try:
        if address.store == LOCAL:
            return local_store.exists(address.parts)
        _load(address, None)
        return True
    except ObjectNotFoundError:
        return False


def history(address: Address) -> list[dict[str, Any]]:
    if address.store == LOCAL:
        return local_store.history(address.parts)
    if address.store == BUILTIN:
        return [{"version": None, "current": True}] if exists(address) else []
    answer = _den().history(str(address))
    return [
        {**v, "version": str(v["version"]), "current": v["version"] == answer["current_version"]}
        for v in answer["versions"]
    ]


def delete(address: Address) -> bool:
    if address.store == LOCAL:
        return local_store.delete(address.parts)
    if address.store == BUILTIN:
        raise InvalidNameError(f"{address} is a built-in config and cannot be deleted")
    try:
        _den().delete(str(address))
    except ObjectNotFoundError:
        return False
    return True


def listing(folder: str | None = None) -> list[tuple[str, list[dict[str, Any]] | RunhouseError]]:
    """What ``runhouse ls`` shows: ``folder`` (default: the current one) and, when logged in, the same path
    in the other store (``~/a`` and ``/<user>/a``), each as (address, entries); the other store's failure
    (Den down) is given in place of its entries, never raised.

    ``folder`` may be a path the shell expanded from ``~`` (``/home/me/proj``): it is read as ``~/proj``.
    """
    text = _unexpanded(folder) if folder else current_folder()
    user = _username()
    address = names.parse_folder(text, username=user)
    shown: list[tuple[str, list[dict[str, Any]] | RunhouseError]] = [(str(address), folder_contents(str(address)))]
    other: Address | None = None
    if user is not None and address.store == LOCAL:
        other = Address(DEN, (user, *address.parts))
    elif user is not None and address.store == DEN and address.parts[:1] == (user,):
        other = Address(LOCAL, address.parts[1:])
    if other is not None:
        try:
            shown.append((str(other), folder_contents(str(other))))
        except RunhouseError as exc:
            shown.append((str(other), exc))
    return shown


def _unexpanded(folder: str) -> str:
    """``folder`` with the home folder the shell put in place of ``~`` turned back into ``~``."""
    from pathlib import Path

    home = str(Path.home()).rstrip("/")
    if home and (folder == home or folder.startswith(home + "/")):
        return "~" + folder[len(home):]
    return folder


def folder_contents(folder: str | None = None) -> list[dict[str, Any]]:
    """The resources in ``folder`` (default: the current folder), with type and last-saved time."""
    address = names.parse_folder(folder or current_folder(), username=_username())
    if address.store == LOCAL:
        return local_store.list_folder(address.parts)
    if address.store == DEN:
        entries = _den().folder(str(address))["entries"]
        return [
            {"name": e["name"], "resource_type": "folder" if e["kind"] == "folder" else e["resource_type"],
             "saved_at": e["updated_at"]}
            for e in entries
        ]
    raise InvalidNameError(f"{address} is not a folder")
