"""The web UI's own database work, on Den's models: sign-in sessions, a user's tokens, search, clusters.

Everything here that acts for a user takes the :class:`~runhouse.den.auth.Caller` of a request made through
:func:`runhouse.den.access.run_as_caller`, and decides access with :func:`runhouse.den.service.access`, the
one rule the JSON API applies. The one exception is :func:`session_token`, the step before that check: it
turns a session cookie back into the token that ``run_as_caller`` then authenticates.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from runhouse.den.auth import Caller
from runhouse.den.crypto import SecretBox
from runhouse.den.db import ClusterHeartbeat, ClusterUsage, Database, Resource, Token, WebSession, utcnow
from runhouse.den.service import _stored, access, iso
from runhouse.errors import BadRequestError, ConfigError, ObjectNotFoundError

SESSION_LIFETIME = timedelta(hours=8)
"""How long a sign-in lasts; the cookie expires with it."""
SESSION_ID_BYTES = 32
MAX_SEARCH_LENGTH = 200
SEARCH_RESULTS = 200
"""The most matches a search shows."""
SEARCH_SCAN = 5000
"""The most matching names one search looks at (matches the caller may not read are skipped)."""
USAGE_WINDOW = timedelta(hours=24)


# ------------------------------------------------------------------------------------------ sessions


def _session_key(session_id: str) -> str:
    return hashlib.sha256(f"session:{session_id}".encode()).hexdigest()


def csrf_token(session_id: str) -> str:
    """The CSRF token of a session: derived from its secret id, so it needs no storage, and reveals nothing
    of the id."""
    return hmac.new(session_id.encode(), b"csrf", hashlib.sha256).hexdigest()


def create_session(caller: Caller, box: SecretBox, token: str) -> str:
    """A new sign-in of the caller, whose request was authenticated with ``token``: returns the session id
    for the cookie (only its hash is stored; the token is stored sealed with ``box``). Expired sessions of
    everyone are dropped on the way."""
    caller.session.execute(delete(WebSession).where(WebSession.expires_at < utcnow()))
    session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
    now = utcnow()
    caller.session.add(WebSession(id_hash=_session_key(session_id), token_id=caller.token_id,
                                  token_ciphertext=box.seal({"token": token}), created_at=now,
                                  expires_at=now + SESSION_LIFETIME))
    return session_id


def session_token(database: Database, box: SecretBox, session_id: str) -> str | None:
    """The token behind a live session, or None for an unknown, expired or undecryptable one (the server
    key changed) or one whose token was revoked (its row went with the token)."""
    if not session_id or len(session_id) > 2 * SESSION_ID_BYTES or not session_id.isascii():
        return None

    def find(session: Session) -> str | None:
        return session.scalar(select(WebSession.token_ciphertext).where(
            WebSession.id_hash == _session_key(session_id), WebSession.expires_at >= utcnow()))

    sealed = database.run(find, read_only=True)
    if sealed is None:
        return None
    try:
        token = box.open(sealed).get("token")
    except ConfigError:
        return None
    return token if isinstance(token, str) else None


def end_session(caller: Caller, session_id: str) -> None:
    """Sign out: forget the session (the token it used stays valid for the user's other clients)."""
    caller.session.execute(delete(WebSession).where(WebSession.id_hash == _session_key(session_id),
                                                    WebSession.token_id == caller.token_id))


# -------------------------------------------------------------------------------------------- tokens


def list_tokens(caller: Caller) -> list[dict[str, Any]]:
    """The caller's tokens (never their values, which Den does not have): id, creation time, and whether
    this request was made with it."""
    rows = caller.session.execute(select(Token.id, Token.created_at).where(Token.user_id == caller.user.id)
                                  .order_by(Token.created_at, Token.id))
    return [{"id": token_id, "created_at": iso(created), "current": token_id == caller.token_id}
            for token_id, created in rows]


def revoke_token(caller: Caller, token_id: int) -> None:
    """Revoke one of the caller's tokens (their web sessions with it end too); others' tokens are not found."""
    digest = caller.session.scalar(select(Token.token_hash).where(Token.id == token_id,
                                                                  Token.user_id == caller.user.id))
    if digest is None:
        raise ObjectNotFoundError(f"{caller.name} has no token {token_id}")
    caller.session.execute(delete(WebSession).where(WebSession.token_id == token_id))
    caller.session.execute(delete(Token).where(Token.id == token_id))
    if caller.token_cache is not None:
        caller.token_cache.discard(digest)


# --------------------------------------------------------------------------------- what one can read


def access_label(caller: Caller, address: str, public: bool, shares: dict[str, str] | None = None) -> str | None:
    """What the caller may do at ``address``: ``write``, ``read``, ``public`` (read, as everyone may) or None."""
    level = access(caller, _stored(address), caller.shares if shares is None else shares)
    return level if level is not None else "public" if public else None


def roots(caller: Caller) -> list[dict[str, Any]]:
    """Where the caller's tree starts: their own folder, their orgs' folders, and what is shared with them."""
    entries = [{"address": f"/{caller.name}", "kind": "folder", "access": "write", "why": "yours"}]
    entries += [{"address": f"/{org}", "kind": "folder", "access": "write", "why": f"org ({role})"}
                for org, role in sorted(caller.orgs.items())]
    shared = sorted(caller.shares.items())
    kinds = dict(caller.session.execute(select(Resource.address, Resource.resource_type)
                                        .where(Resource.address.in_([address for address, _ in shared]))).all())
    entries += [{"address": address, "kind": "resource" if address in kinds else "folder", "access": level,
                 "why": "shared with you"} for address, level in shared]
    return entries


def search(caller: Caller, text: str) -> list[dict[str, Any]]:
    """Resources whose address contains ``text`` (any case) that the caller may read, by address; at most
    :data:`SEARCH_RESULTS`."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_SEARCH_LENGTH or not text.isprintable():
        raise BadRequestError(f"search for 1-{MAX_SEARCH_LENGTH} printable characters")
    pattern = "%" + text.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = caller.session.execute(
        select(Resource.address, Resource.owner, Resource.resource_type, Resource.updated_at, Resource.public)
        .where(func.lower(Resource.address).like(pattern, escape="\\")).order_by(Resource.address).limit(SEARCH_SCAN))
    shares, found = caller.shares, []
    for address, owner, resource_type, updated_at, public in rows:
        label = access_label(caller, address, public, shares)
        if label is not None:
            found.append({"address": address, "owner": owner, "resource_type": resource_type,
                          "updated_at": iso(updated_at), "access": label})
            if len(found) == SEARCH_RESULTS:
                break
    return found


def readable_clusters(caller: Caller) -> list[dict[str, Any]]:
    """The clusters saved in Den that the caller may read, with their last heartbeat and calls in the last
    :data:`USAGE_WINDOW`."""
    since = utcnow() - USAGE_WINDOW
    usage = (select(ClusterUsage.address, func.sum(ClusterUsage.calls).label("calls"))
             .where(ClusterUsage.hour >= since).group_by(ClusterUsage.address).subquery())
    rows = caller.session.execute(
        select(Resource.address, Resource.owner, Resource.updated_at, Resource.public, ClusterHeartbeat.time,
               ClusterHeartbeat.status, usage.c.calls)
        .outerjoin(ClusterHeartbeat, ClusterHeartbeat.address == Resource.address)
        .outerjoin(usage, usage.c.address == Resource.address)
        .where(Resource.resource_type == "cluster").order_by(Resource.address))
    shares, found = caller.shares, []
    for address, owner, updated_at, public, beat_time, status, calls in rows:
        label = access_label(caller, address, public, shares)
        if label is not None:
            found.append({"address": address, "owner": owner, "updated_at": iso(updated_at), "access": label,
                          "heartbeat": iso(beat_time) if beat_time is not None else None,
                          "status": status_summary(status), "calls": int(calls or 0)})
    return found


def require_cluster(caller: Caller, address: str) -> None:
    """404 unless a resource is at ``address``, 400 unless it is a cluster (after the caller's read access was
    checked)."""
    kind = caller.session.scalar(select(Resource.resource_type).where(Resource.address == address))
    if kind is None:
        raise ObjectNotFoundError(f"no resource at {address}")
    if kind != "cluster":
        raise BadRequestError(f"{address} is a {kind}, not a cluster; its page is /ui/resources{address}")


def status_summary(status: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The top-level scalar fields of a heartbeat's status, as (name, text) pairs, for a table."""
    if not isinstance(status, dict):
        return []
    return [(str(key), str(value)) for key, value in sorted(status.items())
            if isinstance(value, (str, int, float, bool)) or value is None]
