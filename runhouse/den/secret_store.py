"""Den's secrets: provider credentials per owner (a user, or an org its members share), sealed with the
server key (:mod:`runhouse.den.crypto`) before they reach the database.

Only the owner, or members of the owning org, may list, read, write or delete an owner's secrets; anyone
else gets 403 whether the secret exists or not. Values appear only in the body of a successful read: never
in errors, logs or audit entries (those name the secret and its provider).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from runhouse.den import PermissionDeniedError
from runhouse.den.auth import Caller, validate_owner_name
from runhouse.den.crypto import SecretBox
from runhouse.den.db import StoredSecret, utcnow
from runhouse.den.service import audit, check_json_size, iso
from runhouse.errors import BadRequestError, InvalidNameError, ObjectNotFoundError
from runhouse.rns.names import DEN, Address

MAX_PROVIDER_LENGTH = 64


def _secret_address(owner: str, name: str) -> Address:
    validate_owner_name(owner, "owner")
    try:
        return Address(DEN, (owner, name))
    except InvalidNameError as exc:
        raise InvalidNameError(f"Invalid secret name: {exc}") from None


def _require_owner(caller: Caller, owner: str, doing: str) -> None:
    if owner != caller.name and owner not in caller.orgs:
        raise PermissionDeniedError(
            f"{caller.name} may not {doing} the secrets of {owner}: only {owner} (or its org's members) may"
        )


def _find(caller: Caller, owner: str, name: str) -> StoredSecret | None:
    return caller.session.scalar(select(StoredSecret).where(StoredSecret.owner == owner, StoredSecret.name == name))


def _summary(row: StoredSecret) -> dict[str, Any]:
    return {"owner": row.owner, "name": row.name, "provider": row.provider, "updated_by": row.updated_by,
            "updated_at": iso(row.updated_at)}


def put_secret(caller: Caller, box: SecretBox, owner: str, name: str, provider: str,
               values: dict[str, Any]) -> dict[str, Any]:
    """Store (or replace) the secret ``name`` of ``owner``: ``values`` sealed with ``box``."""
    _secret_address(owner, name)
    _require_owner(caller, owner, "write")
    if not isinstance(provider, str) or not provider or len(provider) > MAX_PROVIDER_LENGTH or not (
            provider.replace("-", "").replace("_", "").isalnum() and provider.isascii()):
        raise BadRequestError(f"provider must be 1-{MAX_PROVIDER_LENGTH} letters, digits, - or _")
    if not isinstance(values, dict) or not values:
        raise BadRequestError("values must be a non-empty JSON object")
    check_json_size(values, "secret")
    row, now = _find(caller, owner, name), utcnow()
    if row is None:
        row = StoredSecret(owner=owner, name=name, created_at=now)
        caller.session.add(row)
    row.provider, row.ciphertext, row.updated_by, row.updated_at = provider, box.seal(values), caller.name, now
    audit(caller, "secret_put", f"/{owner}", secret=name, provider=provider)
    return _summary(row)


def get_secret(caller: Caller, box: SecretBox, owner: str, name: str) -> dict[str, Any]:
    """The secret ``name`` of ``owner``, with its values.

    Runs in a write transaction: the read's audit entry is committed with it, before any value is returned.
    """
    _secret_address(owner, name)
    _require_owner(caller, owner, "read")
    row = _find(caller, owner, name)
    if row is None:
        raise ObjectNotFoundError(f"{owner} has no secret {name!r}")
    audit(caller, "secret_read", f"/{owner}", at_once=True, secret=name, provider=row.provider)
    return {**_summary(row), "values": box.open(row.ciphertext)}


def list_secrets(caller: Caller, owner: str) -> dict[str, Any]:
    """The names and providers of ``owner``'s secrets, never their values."""
    validate_owner_name(owner, "owner")
    _require_owner(caller, owner, "list")
    rows = caller.session.scalars(select(StoredSecret).where(StoredSecret.owner == owner).order_by(StoredSecret.name))
    return {"owner": owner, "secrets": [_summary(row) for row in rows]}


def delete_secret(caller: Caller, owner: str, name: str) -> dict[str, Any]:
    """Delete the secret ``name`` of ``owner``."""
    _secret_address(owner, name)
    _require_owner(caller, owner, "delete")
    row = _find(caller, owner, name)
    if row is None:
        raise ObjectNotFoundError(f"{owner} has no secret {name!r}")
    summary = _summary(row)
    caller.session.delete(row)
    audit(caller, "secret_delete", f"/{owner}", secret=name, provider=row.provider)
    return summary
