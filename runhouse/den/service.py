"""Den's library: resources with versions, access checks, sharing, the audit log and per-user defaults.

Every function takes the :class:`~runhouse.den.auth.Caller` of one request (its session is the request's
transaction) and returns plain JSON-able data; HTTP routes only parse input and call one of them.

Access is decided by address, so it never depends on whether a resource exists:

- **write** (put, delete, roll back, share, unshare, set ``public``): the owner of ``/<user>/...``, members
  of the org of ``/<org>/...``, and users with a write share on the address or on a folder above it;
- **read** (get, history, list shares): writers, users with a read share on the address or a folder above
  it, and every logged-in user when the resource is public.

A known caller who may not do something gets 403 (:class:`PermissionDeniedError`), for existing and
missing resources alike, so others' names are not revealed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, Integer, String, and_, bindparam, delete, exists, func, literal, or_, select
from sqlalchemy.engine import Row
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.elements import KeyedColumnElement

from runhouse.den import PayloadTooLargeError, PermissionDeniedError
from runhouse.den.auth import Account, Admin, Caller, find_user, validate_owner_name
from runhouse.den.db import (
    AuditEntry,
    Database,
    Membership,
    Org,
    Resource,
    ResourceVersion,
    Share,
    User,
    UserDefaults,
    iso_text,
    starts_with,
    utcnow,
)
from runhouse.errors import BadRequestError, InvalidNameError, ObjectNotFoundError
from runhouse.rns.names import DEN, Address, parse, parse_folder

MAX_CONFIG_BYTES = 1 << 20
MAX_JSON_DEPTH = 100
"""How deep objects and lists may nest in a config, defaults or a secret (deeper JSON is not written)."""
MAX_RESOURCE_TYPE_LENGTH = 255
MAX_SHARE_USERS = 100
MAX_AUDIT_LIMIT = 1000
ACCESS_LEVELS = ("read", "write")
ACTIONS = ("create", "update", "rollback", "read", "delete", "share", "unshare", "visibility", "secret_put",
           "secret_read", "secret_delete", "user_add", "user_token", "org_add", "cluster_key", "launch")
AUDIT_SCAN_ENTRIES = 5000
"""The most audit entries one audit request looks at (it answers with a cursor to go on from there)."""
_EPOCH = datetime(1970, 1, 1)
_CURSOR = re.compile(r"([0-9]{1,18})_([0-9]{1,18})")

# ---------------------------------------------------------------------------------------------- input


def resource_address(text: str) -> Address:
    """A Den resource address ``/owner/a/b``; :class:`InvalidNameError` (400) for anything else."""
    if not isinstance(text, str) or not text.startswith("/"):
        raise InvalidNameError(f"Invalid Den address {str(text)[:100]!r}: expected /owner/a/b")
    return parse(text)


def folder_address(text: str) -> Address:
    """A Den folder or resource address, roots included: ``/owner``, ``/owner/a``."""
    if not isinstance(text, str) or not text.startswith("/"):
        raise InvalidNameError(f"Invalid Den folder {str(text)[:100]!r}: expected /owner or /owner/a")
    return parse_folder(text)


def _stored(text: str) -> Address:
    """An address read back from the database (always canonical)."""
    return Address(DEN, tuple(text[1:].split("/")))


def _nested_over(value: Any, limit: int) -> bool:
    """Whether objects and lists nest more than ``limit`` deep in ``value`` (a JSON value)."""
    pending: list[tuple[int, Any]] = [(1, value)]
    while pending:
        depth, item = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((depth + 1, child) for child in children if isinstance(child, (dict, list)))
    return False


def _lone_surrogate(value: Any) -> str | None:
    """Where in ``value`` (a JSON value) a key or string holds a lone surrogate, as ``['a'][0]``; None if nowhere."""
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return where or "its top level"
        elif isinstance(item, dict):
            for key, child in item.items():
                pending.extend([(f"{where}[{ascii(key)}]", key), (f"{where}[{ascii(key)}]", child)])
        elif isinstance(item, list):
            pending.extend((f"{where}[{index}]", child) for index, child in enumerate(item))
    return None


def check_json_size(value: Any, what: str) -> int:
    """The size of ``value`` as compact JSON; 400 for NaN/Infinity, nesting over :data:`MAX_JSON_DEPTH` or text
    that is not Unicode (a lone surrogate, which could be stored but never sent back as UTF-8), 413 over
    :data:`MAX_CONFIG_BYTES`."""
    if _nested_over(value, MAX_JSON_DEPTH):
        raise BadRequestError(f"the {what} nests objects and lists over {MAX_JSON_DEPTH} deep; flatten it")
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise BadRequestError(f"the {what} contains NaN or Infinity, which JSON does not allow") from None
    # Every surrogate, paired or not, is escaped here as \ud800-\udfff: only then look closer.
    where = _lone_surrogate(value) if "\\ud" in text else None
    if where is not None:
        raise BadRequestError(
            f"the {what} holds text that is not Unicode at {where}: a lone surrogate (\\ud800-\\udfff without "
            "its pair), which cannot be sent back as UTF-8; send valid text (binary data encoded, e.g. as base64)"
        )
    size = len(text)
    if size > MAX_CONFIG_BYTES:
        raise PayloadTooLargeError(f"the {what} is {size:,} bytes as JSON; Den accepts at most {MAX_CONFIG_BYTES:,}")
    return size


def _resource_type(config: dict[str, Any]) -> str:
    value = config.get("resource_type", "resource")
    if (not isinstance(value, str) or not value or len(value) > MAX_RESOURCE_TYPE_LENGTH
            or not value.isprintable() or not value.isascii()):
        raise BadRequestError(
            f"config['resource_type'] must be 1-{MAX_RESOURCE_TYPE_LENGTH} printable ASCII characters, "
            f"got {str(value)[:100]!r}"
        )
    return value


def _naive_utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def iso(moment: datetime) -> str:
    """A stored (naive UTC) time as ISO 8601 with its zone (what ``isoformat`` gives for UTC, made without
    an aware copy: listings format thousands)."""
    return moment.isoformat() + "+00:00"


# ------------------------------------------------------------------------------------------- access


def _chain(address: Address) -> list[str]:
    """The address and every folder above it, from ``/owner`` down."""
    return ["/" + "/".join(address.parts[:i]) for i in range(1, len(address.parts) + 1)]


def access(caller: Caller, address: Address, shares: dict[str, str] | None = None) -> str | None:
    """``"write"``, ``"read"`` or None: what the caller may do at ``address``, the public flag aside.

    ``shares`` (the caller's shares, all of them) saves a query per address when checking many.
    """
    owner = address.parts[0]
    if owner == caller.name or owner in caller.orgs:
        return "write"
    chain = _chain(address)
    if shares is None:
        levels = set(caller.session.scalars(
            select(Share.access_level).where(Share.user_id == caller.user.id, Share.address.in_(chain))
        ))
    else:
        levels = {shares[folder] for folder in chain if folder in shares}
    return "write" if "write" in levels else "read" if levels else None


def _denied(caller: Caller, address: Address, doing: str, needs: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"{caller.name} may not {doing} {address}: that needs {needs}; ask an owner of /{address.parts[0]} to share it"
    )


def _require_write(caller: Caller, address: Address, doing: str) -> None:
    if access(caller, address) != "write":
        raise _denied(caller, address, doing, f"ownership, membership of /{address.parts[0]} or a write share")


def _find(session: Session, address: Address, lock: bool = False) -> Resource | None:
    query = select(Resource).where(Resource.address == str(address))
    return session.scalar(query.with_for_update() if lock else query)


def _require_read(caller: Caller, address: Address, is_public: Callable[[], bool]) -> None:
    """403 unless the caller may read ``address``; ``is_public`` (asked only when access alone does not
    allow it) says whether a resource is there and public."""
    if access(caller, address) is None and not is_public():
        raise _denied(caller, address, "read", "ownership, org membership, a share, or the resource being public")


def _readable(caller: Caller, address: Address) -> Resource | None:
    """The resource at ``address`` (None if there is none) after checking the caller may read it."""
    resource = _find(caller.session, address)
    _require_read(caller, address, lambda: resource is not None and resource.public)
    return resource


def _existing(resource: Resource | None, address: Address) -> Resource:
    if resource is None:
        raise ObjectNotFoundError(f"no resource at {address}")
    return resource


def audit(caller: Caller | Admin, action: str, address: Address | str, at_once: bool = False, **detail: Any) -> None:
    """Record who did ``action`` at ``address`` (a user, or the administrator): in the request's transaction,
    or after the request when it is read-only. ``at_once`` entries (a secret read) must be committed before
    the request answers, so such requests run in a write transaction."""
    entry = audit_entry(caller.name, action, address, **detail)
    if caller.read_only:
        if at_once:
            raise RuntimeError(f"the {action} audit entry must be written with the request: run it read_only=False")
        caller.queued_audit.append(entry)
    else:
        caller.session.add(AuditEntry(**entry))


def audit_entry(who: str, action: str, address: Address | str, **detail: Any) -> dict[str, Any]:
    """The audit entry (``AuditEntry`` column values) of ``who`` doing ``action`` at ``address`` now."""
    text = str(address)
    return {"time": utcnow(), "user": who, "action": action, "address": text, "owner": text[1:].split("/", 1)[0],
            "detail": detail}


# ---------------------------------------------------------------------------------------- resources


def _summary(resource: Resource | Row[Any]) -> dict[str, Any]:
    """The resource's own fields; ``resource`` may be a row with the same column names."""
    return {
        "address": resource.address,
        "resource_type": resource.resource_type,
        "public": resource.public,
        "current_version": resource.current_version,
        "created_at": iso(resource.created_at),
        "updated_at": iso(resource.updated_at),
    }


def _with_version(resource: Resource, version: ResourceVersion) -> dict[str, Any]:
    return {
        **_summary(resource),
        "version": version.version,
        "author": version.author,
        "saved_at": iso(version.created_at),
        "config": version.config,
    }


def _add_version(caller: Caller, address: Address, resource: Resource | None, config: dict[str, Any]) -> tuple[
    Resource, ResourceVersion
]:
    now = utcnow()
    if resource is None:
        resource = Resource(address=str(address), owner=address.parts[0], public=False, current_version=0,
                            created_at=now)
        caller.session.add(resource)
    resource.resource_type = _resource_type(config)
    resource.current_version += 1
    resource.updated_at = now
    caller.session.flush()
    version = ResourceVersion(resource_id=resource.id, version=resource.current_version, config=config,
                              author=caller.name, created_at=now)
    caller.session.add(version)
    return resource, version


def put_resource(caller: Caller, text: str, config: dict[str, Any]) -> dict[str, Any]:
    """Save ``config`` at ``text`` as a new version (version 1 creates the resource)."""
    address = resource_address(text)
    _require_write(caller, address, "write")
    if not isinstance(config, dict):
        raise BadRequestError(f"a config must be a JSON object, got {type(config).__name__}")
    check_json_size(config, "config")
    existing = _find(caller.session, address, lock=True)
    resource, version = _add_version(caller, address, existing, config)
    audit(caller, "create" if existing is None else "update", address, version=version.version)
    return _with_version(resource, version)


def _version(session: Session, resource: Resource, number: int | None) -> ResourceVersion:
    number = resource.current_version if number is None else number
    row = session.scalar(
        select(ResourceVersion).where(ResourceVersion.resource_id == resource.id, ResourceVersion.version == number)
    )
    if row is None:
        raise _no_version(resource, number)
    return row


def _no_version(resource: Resource, number: int | None) -> ObjectNotFoundError:
    return ObjectNotFoundError(
        f"{resource.address} has no version {number}; it has versions 1 to {resource.current_version}"
    )


def _covering_share(user_id: ColumnElement[int] | int, address: QueryableAttribute[str] | ColumnElement[str] | str,
                    lowest: ColumnElement[str] | str) -> ColumnElement[bool]:
    """SQL for the shares of ``user_id`` on ``address`` or on a folder above it (what :func:`access` reads),
    those from ``lowest`` up: a narrow range of the (user_id, address) index when ``lowest`` is the owner's
    root or a folder above ``address``. Names match exactly (case and every character) on both databases."""
    return and_(Share.user_id == user_id, Share.address >= lowest, Share.address <= address,
                or_(Share.address == address,
                    func.substr(address, 1, func.length(Share.address) + 1) == Share.address + literal("/")))


# Built once, the hottest read: a resource with its current (or a given) version, and what the reader
# may do there (:func:`access` in SQL: a share on the address or a folder above it, a range of the
# (user_id, address) index; membership of the owner org), in one query.
_ADDRESS = bindparam("address", type_=String)
_READER = bindparam("user_id", type_=Integer)
_SHARED = select(func.max(Share.access_level)).where(  # "write" > "read"
    _covering_share(_READER, _ADDRESS, bindparam("owner_root", type_=String))).scalar_subquery()
_MEMBER = exists().where(Membership.user_id == _READER, Membership.org_id == Org.id,
                         Org.name == bindparam("owner", type_=String))
_RESOURCE_VERSION = (
    select(Resource.address, Resource.resource_type, Resource.public, Resource.current_version, Resource.created_at,
           Resource.updated_at, ResourceVersion.version, ResourceVersion.author,
           ResourceVersion.created_at.label("saved_at"), ResourceVersion.config, _SHARED.label("shared"),
           _MEMBER.label("member"))
    .join(ResourceVersion, ResourceVersion.resource_id == Resource.id)
    .where(Resource.address == _ADDRESS,
           ResourceVersion.version == func.coalesce(bindparam("version", type_=Integer), Resource.current_version))
)


def _read_params(user: Account, address: Address, version: int | None) -> dict[str, Any]:
    owner = address.parts[0]
    return {"address": str(address), "version": version, "user_id": user.id, "owner": owner, "owner_root": "/" + owner}


def _may_read(user: Account, address: Address, row: Any) -> bool:
    """Whether ``user`` may read ``row`` (of ``_RESOURCE_VERSION``) at ``address``: :func:`access`, or public."""
    return address.parts[0] == user.name or bool(row.member) or row.shared is not None or bool(row.public)


def _loaded(row: Any) -> dict[str, Any]:
    return {**_summary(row), "version": row.version, "author": row.author, "saved_at": iso(row.saved_at),
            "config": row.config}


def get_resource(caller: Caller, text: str, version: int | None = None) -> dict[str, Any]:
    """The current version of the resource at ``text``, or version ``version``."""
    address = resource_address(text)
    row = caller.session.connection().execute(_RESOURCE_VERSION, _read_params(caller.user, address, version)).first()
    if row is None or not _may_read(caller.user, address, row):
        _require_read(caller, address, lambda: bool(row.public if row is not None else caller.session.scalar(
            select(Resource.public).where(Resource.address == str(address)))))
    if row is None:
        raise _no_version(_existing(_find(caller.session, address), address), version)
    audit(caller, "read", address, version=row.version)
    return _loaded(row)


async def load_resource(database: Database, user: Account, text: str,
                        version: int | None = None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """:func:`get_resource` without a session, for a caller already authenticated as ``user``: one query
    (:meth:`Database.fetch_one`, from the event loop). Returns the answer and its audit entry (to queue),
    or None where that query cannot answer alone (no such resource or version, or no access), for
    :func:`get_resource` to answer with its error."""
    address = resource_address(text)
    row = await database.fetch_one(_RESOURCE_VERSION, _read_params(user, address, version))
    if row is None or not _may_read(user, address, row):
        return None
    return _loaded(row), audit_entry(user.name, "read", address, version=row.version)


def list_versions(caller: Caller, text: str) -> dict[str, Any]:
    """Every version of a resource (number, author, time), oldest first, without the configs."""
    address = resource_address(text)
    resource = _existing(_readable(caller, address), address)
    rows = caller.session.execute(
        select(ResourceVersion.version, ResourceVersion.author, ResourceVersion.created_at)
        .where(ResourceVersion.resource_id == resource.id)
        .order_by(ResourceVersion.version)
    )
    audit(caller, "read", address, history=True)
    versions = [{"version": number, "author": author, "saved_at": iso(saved)} for number, author, saved in rows]
    return {**_summary(resource), "versions": versions}


def rollback(caller: Caller, text: str, version: int) -> dict[str, Any]:
    """Make version ``version`` current again, by saving its config as a new version."""
    address = resource_address(text)
    _require_write(caller, address, "roll back")
    resource = _existing(_find(caller.session, address, lock=True), address)
    old = _version(caller.session, resource, version)
    resource, new = _add_version(caller, address, resource, old.config)
    audit(caller, "rollback", address, version=new.version, from_version=version)
    return _with_version(resource, new)


def set_public(caller: Caller, text: str, public: bool) -> dict[str, Any]:
    """Let every logged-in user read the resource (``public=True``), or stop that."""
    address = resource_address(text)
    _require_write(caller, address, "change the visibility of")
    resource = _existing(_find(caller.session, address, lock=True), address)
    resource.public = public
    resource.updated_at = utcnow()
    audit(caller, "visibility", address, public=public)
    return _summary(resource)


def delete_resource(caller: Caller, text: str) -> dict[str, Any]:
    """Delete a resource and all its versions; shares on its exact address go too unless it is a folder."""
    address = resource_address(text)
    _require_write(caller, address, "delete")
    resource = _existing(_find(caller.session, address, lock=True), address)
    summary = _summary(resource)
    session = caller.session
    session.execute(delete(ResourceVersion).where(ResourceVersion.resource_id == resource.id))
    session.delete(resource)
    session.flush()
    below = select(Resource.id).where(starts_with(session, Resource.address, f"{address}/")).limit(1)
    if session.scalar(below) is None:  # not a folder either: a later resource here starts unshared
        session.execute(delete(Share).where(Share.address == str(address)))
    audit(caller, "delete", address, versions=summary["current_version"])
    return summary


def list_folder(caller: Caller, text: str) -> dict[str, Any]:
    """The direct children of a folder that the caller may read: resources and sub-folders, by name (a folder
    before a resource of the same name); a sub-folder's time is that of its latest readable resource."""
    folder = folder_address(text)
    prefix = f"{folder}/"
    query = select(Resource.address, Resource.resource_type, iso_text(caller.session, Resource.updated_at)).where(
        starts_with(caller.session, Resource.address, prefix))
    if access(caller, folder) is None:
        # Not the whole folder: only what is public, or shared with the caller below it (a share on it or above
        # would have given the whole), each row decided in SQL as access() would decide it.
        query = query.where(or_(Resource.public.is_(True),
                                exists().where(_covering_share(caller.user.id, Resource.address, prefix))))
    # Core, not the ORM's result machinery; every row is a child or lies below one.
    rows = caller.session.connection().execute(query).all()
    cut = len(prefix)
    resources: dict[str, dict[str, str]] = {}  # name -> its entry
    folders: dict[str, str] = {}  # name -> updated_at of its latest resource
    for address, resource_type, updated_at in rows:
        name = address[cut:]
        slash = name.find("/")
        if slash < 0:
            resources[name] = {"name": name, "address": address, "kind": "resource", "resource_type": resource_type,
                               "updated_at": updated_at}
        else:
            name = name[:slash]
            if folders.get(name, "") < updated_at:
                folders[name] = updated_at
    entries = []
    for name in sorted(resources.keys() | folders.keys()):
        if name in folders:
            entries.append({"name": name, "address": prefix + name, "kind": "folder", "resource_type": "folder",
                            "updated_at": folders[name]})
        if name in resources:
            entries.append(resources[name])
    return {"folder": str(folder), "entries": entries}


# ------------------------------------------------------------------------------------------ sharing


def _share_rows(session: Session, addresses: list[str]) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Share, User.name).join(User).where(Share.address.in_(addresses)).order_by(Share.address, User.name)
    )
    return [
        {"address": share.address, "user": name, "access_level": share.access_level,
         "granted_by": share.granted_by, "created_at": iso(share.created_at)}
        for share, name in rows
    ]


def _users(session: Session, users: list[str]) -> list[User]:
    if not isinstance(users, list) or not 1 <= len(users) <= MAX_SHARE_USERS:
        raise BadRequestError(f"users must be a list of 1 to {MAX_SHARE_USERS} user names or emails")
    return [find_user(session, who) for who in dict.fromkeys(users)]


def share(caller: Caller, text: str, users: list[str], access_level: str) -> dict[str, Any]:
    """Grant ``users`` read or write access to a resource or a folder (and so to all under it)."""
    address = folder_address(text)
    if access_level not in ACCESS_LEVELS:
        raise BadRequestError(f"access_level must be one of {', '.join(ACCESS_LEVELS)}, got {access_level!r}")
    _require_write(caller, address, "share")
    targets = _users(caller.session, users)
    for user in targets:
        row = caller.session.scalar(select(Share).where(Share.address == str(address), Share.user_id == user.id))
        if row is None:
            caller.session.add(Share(address=str(address), user_id=user.id, access_level=access_level,
                                     granted_by=caller.name, created_at=utcnow()))
        else:
            row.access_level, row.granted_by = access_level, caller.name
    caller.session.flush()
    audit(caller, "share", address, users=[user.name for user in targets], access_level=access_level)
    return {"address": str(address), "shares": _share_rows(caller.session, [str(address)])}


def unshare(caller: Caller, text: str, users: list[str]) -> dict[str, Any]:
    """Remove the shares of ``users`` on exactly this address (shares on folders above stay)."""
    address = folder_address(text)
    _require_write(caller, address, "unshare")
    targets = _users(caller.session, users)
    for user in targets:
        row = caller.session.scalar(select(Share).where(Share.address == str(address), Share.user_id == user.id))
        if row is None:
            raise ObjectNotFoundError(
                f"{user.name} has no share on {address} itself; shares on folders above it are removed there"
            )
        caller.session.delete(row)
    caller.session.flush()
    audit(caller, "unshare", address, users=[user.name for user in targets])
    return {"address": str(address), "shares": _share_rows(caller.session, [str(address)])}


def list_shares(caller: Caller, text: str) -> dict[str, Any]:
    """The shares that apply at an address: on it and on every folder above it."""
    address = folder_address(text)
    if access(caller, address) is None:
        raise _denied(caller, address, "see the shares of", "ownership, org membership or a share")
    return {"address": str(address), "shares": _share_rows(caller.session, _chain(address))}


# -------------------------------------------------------------------------------------------- audit


def _cursor(moment: datetime, entry_id: int) -> str:
    """The position after the entry at ``moment`` with ``entry_id`` in the audit log's order (time, then id,
    both descending)."""
    return f"{(moment - _EPOCH) // timedelta(microseconds=1)}_{entry_id}"


def _position(cursor: str) -> tuple[datetime, int]:
    match = _CURSOR.fullmatch(cursor)
    try:
        if match is None:
            raise ValueError(cursor)
        return _EPOCH + timedelta(microseconds=int(match[1])), int(match[2])
    except (ValueError, OverflowError):
        raise BadRequestError(
            f"invalid audit cursor {cursor[:100]!r}: pass the next_cursor of an earlier answer unchanged"
        ) from None


def _visible_to(caller: Caller, entries: ReadOnlyColumnCollection[str, KeyedColumnElement[Any]]) -> ColumnElement[bool]:
    """SQL for the audit ``entries`` (a subquery's columns) that ``caller`` may see, as :func:`access` and
    the public flag decide: their own actions, their own and their orgs' namespaces, shares on an address or
    a folder above it, and public resources."""
    shared = select(Share.id).where(_covering_share(caller.user.id, entries.address, literal("/") + entries.owner))
    public = select(Resource.id).where(Resource.address == entries.address, Resource.public.is_(True))
    return or_(entries.user == caller.name, entries.owner.in_([caller.name, *caller.orgs]), shared.exists(),
               public.exists())


def audit_log(
    caller: Caller,
    prefix: str | None = None,
    user: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Audit entries, newest first, that the caller may see: their own actions, and entries on addresses
    they can read now (so owners and org members see everything under their namespace).

    Filters: ``prefix`` (an address and everything under it), ``user`` (who acted), ``action`` (one of
    :data:`ACTIONS`), ``since`` (inclusive) and ``until`` (exclusive).

    One call looks at no more than :data:`AUDIT_SCAN_ENTRIES` entries (of the user's, with ``user``; of the
    prefix's owner, with ``prefix``; else of all), so its page may hold fewer than ``limit`` entries, or
    none: ``next_cursor``, passed back as ``cursor``, goes on from where it stopped; it is None at the end.
    """
    folder = folder_address(prefix) if prefix is not None else None
    if user is not None:
        validate_owner_name(user)
    if action is not None and action not in ACTIONS:
        raise BadRequestError(f"action must be one of {', '.join(ACTIONS)}, got {action[:100]!r}")
    since, until = _naive_utc(since), _naive_utc(until)
    if since is not None and until is not None and since >= until:
        raise BadRequestError(f"since ({iso(since)}) must be before until ({iso(until)})")
    if not 1 <= limit <= MAX_AUDIT_LIMIT:
        raise BadRequestError(f"limit must be 1 to {MAX_AUDIT_LIMIT}, got {limit}")

    # The scan: one index range, newest first (by time: reads are queued and inserted a little after the
    # writes that followed them), at most AUDIT_SCAN_ENTRIES long. Every other condition filters what it found.
    scan = []
    if user is not None:
        scan.append(AuditEntry.user == user)
    elif folder is not None:
        scan.append(AuditEntry.owner == folder.parts[0])
    if since is not None:
        scan.append(AuditEntry.time >= since)
    if until is not None:
        scan.append(AuditEntry.time < until)
    if cursor is not None:
        moment, entry_id = _position(cursor)
        scan += [AuditEntry.time <= moment, or_(AuditEntry.time < moment, AuditEntry.id < entry_id)]
    newest_first = (AuditEntry.time.desc(), AuditEntry.id.desc())
    window = (select(AuditEntry.id, AuditEntry.time, AuditEntry.user, AuditEntry.action, AuditEntry.address,
                     AuditEntry.owner, AuditEntry.detail)
              .where(*scan).order_by(*newest_first).limit(AUDIT_SCAN_ENTRIES).subquery())
    found = [_visible_to(caller, window.c)]
    if folder is not None:
        found += [window.c.owner == folder.parts[0],
                  or_(window.c.address == str(folder), starts_with(caller.session, window.c.address, f"{folder}/"))]
    if action is not None:
        found.append(window.c.action == action)
    rows = caller.session.execute(
        select(window).where(*found).order_by(window.c.time.desc(), window.c.id.desc()).limit(limit)).all()
    last = (rows[-1].time, rows[-1].id) if len(rows) == limit else None
    if last is None:  # the scan's last entry, if it stopped short of the end
        scanned = caller.session.execute(select(AuditEntry.time, AuditEntry.id).where(*scan).order_by(*newest_first)
                                         .offset(AUDIT_SCAN_ENTRIES - 1).limit(1)).first()
        last = (scanned.time, scanned.id) if scanned is not None else None
    entries = [{"id": row.id, "time": iso(row.time), "user": row.user, "action": row.action, "address": row.address,
                "detail": row.detail} for row in rows]
    return {"entries": entries, "next_cursor": _cursor(*last) if last is not None else None}


# ----------------------------------------------------------------------------------------- defaults


def get_defaults(caller: Caller) -> dict[str, Any]:
    """The caller's stored config defaults (empty when none were uploaded)."""
    row = caller.session.get(UserDefaults, caller.user.id)
    return {"defaults": dict(row.defaults) if row is not None else {}}


def put_defaults(caller: Caller, defaults: dict[str, Any]) -> dict[str, Any]:
    """Replace the caller's config defaults."""
    if not isinstance(defaults, dict):
        raise BadRequestError(f"defaults must be a JSON object, got {type(defaults).__name__}")
    check_json_size(defaults, "defaults")
    row = caller.session.get(UserDefaults, caller.user.id)
    if row is None:
        caller.session.add(UserDefaults(user_id=caller.user.id, defaults=defaults, updated_at=utcnow()))
    else:
        row.defaults, row.updated_at = defaults, utcnow()
    return {"defaults": defaults}
