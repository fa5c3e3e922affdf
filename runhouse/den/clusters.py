"""Den's view of clusters: who may use one (asked by its daemon), its heartbeat key, launches, heartbeats, usage.

A daemon started with Den auth (``rh.cluster(..., den_auth=True)``) asks Den, with the token a caller sent
it, what that caller may do on the cluster (:func:`access_of`): the answer is :func:`runhouse.den.service.access`
at the cluster's address, the public flag counting as read, like every other read. The daemon holds no user
credential: it reports with the cluster's **heartbeat key** (``rhc_`` and 43 characters), which a writer of the
cluster gets from :func:`issue_key` when enabling Den auth, stored here only as its SHA-256, and accepted only
for that cluster's heartbeat (:func:`authenticate_key`, :func:`record_heartbeat`).

Readers of a cluster see its launches (who brought it up, when, from where), its last heartbeat (the
daemon's status summary) and its usage (requests per caller per hour) with :func:`cluster_info`.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from runhouse.den.auth import Caller, hash_token, validate_owner_name
from runhouse.den.db import ClusterHeartbeat, ClusterKey, ClusterLaunch, ClusterUsage, utcnow
from runhouse.den.service import (
    _find,
    _readable,
    _require_write,
    access,
    audit,
    check_json_size,
    iso,
    resource_address,
)
from runhouse.errors import AuthenticationError, BadRequestError, ObjectNotFoundError, PayloadTooLargeError
from runhouse.rns.names import Address

KEY_PREFIX = "rhc_"
KEY_BYTES = 32
MAX_KEY_LENGTH = 256
MAX_ORIGIN_LENGTH = 255
MAX_STATUS_BYTES = 64 * 1024
"""The largest status summary a heartbeat may carry, as JSON."""
MAX_CALLERS_PER_HEARTBEAT = 1000
MAX_CALLS_PER_CALLER = 10**9
DAEMON_TOKEN_CALLER = "(daemon token)"
"""Who made the requests sent with the daemon's own token, in a cluster's usage (no user can have this name)."""
LAUNCHES_SHOWN = 100
USAGE_DAYS_SHOWN = 30


@dataclass
class ClusterReporter:
    """The daemon of one cluster in one request, authenticated by the cluster's heartbeat key."""

    session: Session
    address: Address
    read_only: bool = False
    queued_audit: list[dict[str, Any]] = field(default_factory=list, repr=False)


def access_of(caller: Caller, text: str) -> dict[str, Any]:
    """What the caller may do on the cluster at ``text``: ``{"user", "access": "write" | "read" | None}``.

    Read also when the resource is public, as for every read. Recorded in the audit log as a read.
    """
    address = resource_address(text)
    level = access_level(caller, address)
    audit(caller, "read", address, access=level)
    return {"user": caller.name, "access": level}


def access_level(caller: Caller, address: Address) -> str | None:
    """:func:`runhouse.den.service.access`, with a public resource readable by everyone."""
    level = access(caller, address)
    if level is None:
        resource = _find(caller.session, address)
        if resource is not None and resource.public:
            return "read"
    return level


def issue_key(caller: Caller, text: str) -> dict[str, str]:
    """A new heartbeat key for the cluster saved at ``text`` (writers only); an older key stops working."""
    address = resource_address(text)
    _require_write(caller, address, "enable Den auth for")
    resource = _find(caller.session, address)
    if resource is None:
        raise ObjectNotFoundError(f"no resource at {address}: save the cluster there first (cluster.save())")
    if resource.resource_type != "cluster":
        raise BadRequestError(f"{address} is a {resource.resource_type}, not a cluster")
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    caller.session.execute(delete(ClusterKey).where(ClusterKey.address == str(address)))
    caller.session.add(ClusterKey(address=str(address), key_hash=hash_token(key), created_by=caller.name,
                                  created_at=utcnow()))
    audit(caller, "cluster_key", address)
    return {"address": str(address), "key": key}


def authenticate_key(session: Session, text: str, key: str | None) -> ClusterReporter:
    """The reporter of the cluster at ``text`` if ``key`` is its heartbeat key; 401 otherwise."""
    address = resource_address(text)
    if not key:
        raise AuthenticationError("missing heartbeat key: send 'Authorization: Bearer <the cluster's key>'")
    digest = hash_token(key) if len(key) <= MAX_KEY_LENGTH and key.isascii() else ""
    stored = session.scalar(select(ClusterKey.key_hash).where(ClusterKey.address == str(address)))
    if stored is None or not hmac.compare_digest(stored, digest):
        raise AuthenticationError(
            f"this is not the heartbeat key of {address}: enable Den auth on the cluster again "
            "(cluster.enable_den_auth()) to give its daemon a new one")
    return ClusterReporter(session, address)


def _hour(moment: Any) -> Any:
    return moment.replace(minute=0, second=0, microsecond=0)


def record_heartbeat(reporter: ClusterReporter, status: dict[str, Any], calls: dict[str, int],
                     daemon_calls: int) -> dict[str, Any]:
    """Keep the daemon's status summary as the cluster's last heartbeat, and add its request counts since the
    previous heartbeat (per Den user, and those made with the daemon's own token) to this hour's usage."""
    if not isinstance(status, dict):
        raise BadRequestError("status must be a JSON object")
    if check_json_size(status, "status") > MAX_STATUS_BYTES:
        raise PayloadTooLargeError(f"a heartbeat's status is at most {MAX_STATUS_BYTES:,} bytes as JSON")
    if len(calls) > MAX_CALLERS_PER_HEARTBEAT:
        raise BadRequestError(f"a heartbeat counts at most {MAX_CALLERS_PER_HEARTBEAT} callers; send the rest "
                              "in the next one")
    counts = {validate_owner_name(user): count for user, count in calls.items()}
    if daemon_calls:
        counts[DAEMON_TOKEN_CALLER] = daemon_calls
    for user, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_CALLS_PER_CALLER:
            raise BadRequestError(f"calls of {user!r} must be a whole number from 0 to {MAX_CALLS_PER_CALLER}")
    session, address, now = reporter.session, str(reporter.address), utcnow()
    beat = session.get(ClusterHeartbeat, address, with_for_update=True)
    if beat is None:
        session.add(ClusterHeartbeat(address=address, time=now, status=status))
    else:
        beat.time, beat.status = now, status
    hour = _hour(now)
    for user, count in counts.items():
        if count == 0:
            continue
        key = ClusterUsage.address == address, ClusterUsage.user == user, ClusterUsage.hour == hour
        added = session.execute(update(ClusterUsage).where(*key).values(calls=ClusterUsage.calls + count))
        if not added.rowcount:  # type: ignore[attr-defined]
            session.add(ClusterUsage(address=address, user=user, hour=hour, calls=count))
    session.flush()  # a concurrent first insert of the same hour fails here, and Database.run retries
    return {"address": address, "time": iso(now)}


def record_launch(caller: Caller, text: str, origin: str) -> dict[str, Any]:
    """Record that the caller (a writer of the cluster) brought the cluster at ``text`` up, from ``origin``."""
    address = resource_address(text)
    _require_write(caller, address, "record a launch of")
    if not isinstance(origin, str) or not origin or len(origin) > MAX_ORIGIN_LENGTH or not origin.isprintable():
        raise BadRequestError(f"origin must be 1-{MAX_ORIGIN_LENGTH} printable characters, like user@host")
    now = utcnow()
    caller.session.add(ClusterLaunch(address=str(address), user=caller.name, origin=origin, time=now))
    audit(caller, "launch", address, origin=origin)
    return {"address": str(address), "user": caller.name, "origin": origin, "time": iso(now)}


def cluster_info(caller: Caller, text: str) -> dict[str, Any]:
    """The cluster's launches (newest first), last heartbeat and usage per user and hour over the last
    :data:`USAGE_DAYS_SHOWN` days, for those who may read it (403 for others, whether it exists or not)."""
    address = resource_address(text)
    _readable(caller, address)
    session, key = caller.session, str(address)
    launches = session.execute(
        select(ClusterLaunch.user, ClusterLaunch.origin, ClusterLaunch.time).where(ClusterLaunch.address == key)
        .order_by(ClusterLaunch.time.desc(), ClusterLaunch.id.desc()).limit(LAUNCHES_SHOWN))
    beat = session.get(ClusterHeartbeat, key)
    since = _hour(utcnow()) - timedelta(days=USAGE_DAYS_SHOWN)
    usage = session.execute(
        select(ClusterUsage.user, ClusterUsage.hour, ClusterUsage.calls)
        .where(ClusterUsage.address == key, ClusterUsage.hour >= since)
        .order_by(ClusterUsage.hour.desc(), ClusterUsage.user))
    audit(caller, "read", address, usage=True)
    return {
        "address": key,
        "launches": [{"user": user, "origin": origin, "time": iso(time)} for user, origin, time in launches],
        "heartbeat": {"time": iso(beat.time), "status": beat.status} if beat is not None else None,
        "usage": [{"user": user, "hour": iso(hour), "calls": calls} for user, hour, calls in usage],
    }
