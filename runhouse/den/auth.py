"""Who is calling: tokens (stored only as SHA-256 hashes), users, orgs and their members.

A token is ``rh_`` followed by 43 URL-safe characters from :func:`secrets.token_urlsafe` (256 bits), so a
plain SHA-256 is enough to store it: there is nothing to brute-force, unlike a password. It is shown once,
when made, and never stored or logged.

Users and orgs share one namespace of owners whose names are unique regardless of case. Users come from the
server's administrator (``runhouse den user add``, through :mod:`runhouse.den.admin`); orgs from them too,
and from users as far as the server's :class:`OrgPolicy` allows.

The administrator is no user: it is whoever holds Den's **admin token** (``rh_admin_`` and 43 characters,
made at Den's first start in a 0600 file, :func:`~runhouse.den.files.default_admin_token_file`). Den keeps
only its SHA-256 in memory and compares digests in constant time (:func:`authenticate_admin`); the file is
the one place it lives, so it is never out of step with a database, and replacing it (then restarting Den)
rotates it. Only the admin routes accept it; user routes take only user tokens, and the other way round.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from runhouse.den import DEFAULT_MAX_ORGS_PER_USER, ConflictError, PermissionDeniedError
from runhouse.den.db import Membership, Org, Owner, Share, Token, User, owner_key, utcnow
from runhouse.errors import AuthenticationError, BadRequestError, ObjectNotFoundError
from runhouse.rns.names import validate_owner

TOKEN_PREFIX = "rh_"
ADMIN_TOKEN_PREFIX = "rh_admin_"
ADMIN_ACTOR = "(admin)"
"""Who acted, in the audit log, for the administrator: not a valid owner name, so no user can have it."""
TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 256
# How long a token seen once is trusted without asking the database again, and how many are remembered.
TOKEN_CACHE_TTL_S = 5.0
TOKEN_CACHE_ENTRIES = 10_000
MAX_EMAIL_LENGTH = 320
ROLES = ("admin", "member")


@dataclass(frozen=True)
class OrgPolicy:
    """Which orgs users may create through the API (``runhouse den serve --no-user-orgs``,
    ``--max-orgs-per-user N``); server administrators create any with ``runhouse den org add``."""

    users_create_orgs: bool = True
    """Whether users may create orgs at all."""
    max_orgs_per_user: int = DEFAULT_MAX_ORGS_PER_USER
    """How many orgs one user may create (orgs they created, whoever administers them now)."""


def new_token() -> str:
    """A fresh high-entropy token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def new_admin_token() -> str:
    """A fresh administrator token (told apart from users' by its prefix, for clearer errors)."""
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The hex SHA-256 of ``token``: what Den stores and looks tokens up by."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Account:
    """The columns of a user that requests need."""

    id: int
    name: str
    email: str | None


# Built once: the hottest query, run by every request.
_BY_TOKEN = (
    select(Token.id.label("token_id"), Token.token_hash, User.id, User.name, User.email)
    .join(User)
    .where(Token.token_hash == bindparam("digest"))
)


class TokenCache:
    """Recently seen tokens (by hash) and their accounts, so most requests skip the token query (a round trip
    on PostgreSQL).

    Entries live :data:`TOKEN_CACHE_TTL_S`. Revoking a token through this Den drops it at once; a token
    deleted straight from the database, or through another Den process on the same database, still works
    here for at most that long.
    """

    def __init__(self, ttl_s: float = TOKEN_CACHE_TTL_S, max_entries: int = TOKEN_CACHE_ENTRIES) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[str, tuple[float, Account, int]] = {}
        self._revoked: dict[str, float] = {}  # digest -> until when it may not be cached again
        self._lock = threading.Lock()

    def get(self, digest: str) -> tuple[Account, int] | None:
        """The account and token id of ``digest`` if seen within the TTL."""
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1], entry[2]

    def put(self, digest: str, account: Account, token_id: int) -> None:
        """Remember ``digest`` for the TTL, unless it was revoked within the TTL."""
        now = time.monotonic()
        with self._lock:
            if self._revoked.get(digest, 0.0) >= now:
                return
            if len(self._entries) >= self.max_entries:
                self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
                self._revoked = {k: until for k, until in self._revoked.items() if until >= now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[digest] = (now + self.ttl_s, account, token_id)

    def discard(self, digest: str) -> None:
        """Forget ``digest`` now, and refuse to remember it for the TTL (a request that read the token
        before its revocation committed cannot put it back)."""
        with self._lock:
            self._entries.pop(digest, None)
            self._revoked[digest] = time.monotonic() + self.ttl_s


@dataclass
class Caller:
    """The authenticated user of one request, with the session of its transaction."""

    session: Session
    user: Account
    token_id: int
    token_hash: str = field(default="", repr=False)
    token_cache: TokenCache | None = field(default=None, repr=False)
    read_only: bool = False
    queued_audit: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """Audit entries of a read-only request, written after it by :class:`~runhouse.den.db.AuditWriter`."""
    _orgs: dict[str, str] | None = field(default=None, repr=False)
    _shares: dict[str, str] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def orgs(self) -> dict[str, str]:
        """The caller's orgs, name to role (``admin`` or ``member``), read once per request."""
        if self._orgs is None:
            rows = self.session.execute(
                select(Org.name, Membership.role).join(Membership).where(Membership.user_id == self.user.id)
            )
            self._orgs = {name: role for name, role in rows}
        return self._orgs

    @property
    def shares(self) -> dict[str, str]:
        """Every address shared with the caller, to its access level, read once per request."""
        if self._shares is None:
            rows = self.session.execute(
                select(Share.address, Share.access_level).where(Share.user_id == self.user.id)
            )
            self._shares = {address: level for address, level in rows}
        return self._shares


def authenticate(session: Session, token: str | None, read_only: bool = False,
                 cache: TokenCache | None = None) -> Caller:
    """The caller whose token this is; :class:`AuthenticationError` (401) for a missing or unknown one.

    ``read_only``: the request's transaction may not write, so its audit entries are queued instead.
    ``cache``: tokens seen recently are taken from it, and found ones added.
    """
    if not token:
        raise AuthenticationError("missing token: send the header 'Authorization: Bearer <token>'")
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise _unknown_token(token)
    digest = hash_token(token)
    cached = cache.get(digest) if cache is not None else None
    if cached is None:
        row = session.connection().execute(_BY_TOKEN, {"digest": digest}).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            raise _unknown_token(token)
        cached = Account(row.id, row.name, row.email), row.token_id
        if cache is not None:
            cache.put(digest, *cached)
    return Caller(session=session, user=cached[0], token_id=cached[1], token_hash=digest, token_cache=cache,
                  read_only=read_only)


def cached_account(token: str | None, cache: TokenCache) -> Account | None:
    """The account of ``token`` if ``cache`` knows it (seen within its TTL), without the database; None
    otherwise, for :func:`authenticate` to decide (and to give the error of a missing or unknown token)."""
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None
    cached = cache.get(hash_token(token))
    return cached[0] if cached is not None else None


def _unknown_token(token: str) -> AuthenticationError:
    if token.startswith(ADMIN_TOKEN_PREFIX):
        return AuthenticationError(
            "this is Den's admin token: it works only for administration (`runhouse den user add`, the "
            "/v1/admin routes); log in with a user's token")
    return AuthenticationError("unknown token: log in again with a token from `runhouse den user add`")


@dataclass
class Admin:
    """Den's administrator in one request (or one direct change of the database), with its transaction."""

    session: Session
    token_cache: TokenCache | None = field(default=None, repr=False)
    """Tokens revoked by the administrator are dropped from it at once."""
    name: str = ADMIN_ACTOR
    read_only: bool = False
    queued_audit: list[dict[str, Any]] = field(default_factory=list, repr=False)


def authenticate_admin(session: Session, token: str | None, admin_digest: str | None,
                       cache: TokenCache | None = None) -> Admin:
    """The administrator, if ``token`` hashes to ``admin_digest`` (compared in constant time).

    Raises:
        AuthenticationError: no token, or one that is neither the admin token nor a user's (401).
        PermissionDeniedError: a user's token (403).
    """
    if token and admin_digest is not None and hmac.compare_digest(hash_token(token), admin_digest):
        return Admin(session, cache)
    caller = authenticate(session, token, read_only=True, cache=cache)
    how = ("this Den was started without an admin token" if admin_digest is None else
           "they need Den's admin token (the admin_token file in the den folder of Den's runhouse folder)")
    raise PermissionDeniedError(f"{caller.name} may not use Den's admin routes: {how}")


def validate_owner_name(name: object, kind: str = "user") -> str:
    """``name`` if it can own a Den folder (``/<name>``), else :class:`InvalidNameError` (400).

    The rule is :func:`runhouse.rns.names.validate_owner`'s; ``kind`` (user, org, owner) names it in the message.
    """
    return validate_owner(name, kind)


def _validate_email(email: str) -> str:
    local, at, domain = email.partition("@")
    if (not at or not local or "." not in domain or len(email) > MAX_EMAIL_LENGTH
            or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in email)):
        raise BadRequestError(f"Invalid email {email[:100]!r}: expected name@domain, without spaces")
    return email


def _claim_owner_name(session: Session, name: str, kind: str) -> None:
    """Reserve ``name`` for a new user or org (``kind``); :class:`ConflictError` if an owner has it in any case.

    Two requests claiming names that differ only by case race on the ``owners`` key: the loser's transaction
    fails, and :meth:`~runhouse.den.db.Database.run` retries it into this error.
    """
    taken = session.get(Owner, owner_key(name))
    if taken is not None and taken.name == name:
        article = "an" if taken.kind == "org" else "a"
        raise ConflictError(f"{name!r} is already {article} {taken.kind}; users and orgs share one namespace (/{name})")
    if taken is not None:
        raise ConflictError(
            f"{name!r} differs only by case from the {taken.kind} {taken.name!r}: owner names (users and orgs) "
            "are unique regardless of case; choose another name"
        )
    session.add(Owner(key=owner_key(name), name=name, kind=kind))


def add_user(session: Session, name: str, email: str | None = None) -> str:
    """Create user ``name`` and return their first token (the only time it is visible)."""
    validate_owner_name(name)
    _claim_owner_name(session, name, "user")
    if email is not None:
        _validate_email(email)
        if session.scalar(select(User.id).where(User.email == email)) is not None:
            raise ConflictError(f"email {email!r} already belongs to another user")
    user = User(name=name, email=email, created_at=utcnow())
    session.add(user)
    session.flush()
    return _issue_token(session, user)


def _issue_token(session: Session, user: User | Account) -> str:
    token = new_token()
    session.add(Token(user_id=user.id, token_hash=hash_token(token), created_at=utcnow()))
    return token


def create_token(caller: Caller) -> str:
    """Another token for the caller (say, for a second machine)."""
    return _issue_token(caller.session, caller.user)


def issue_user_token(session: Session, who: str, revoke_old: bool = False,
                     cache: TokenCache | None = None) -> tuple[User, str, int]:
    """A new token for the user named ``who`` (or with that email), as the administrator: the user, the
    token, and how many older tokens were revoked (all of them with ``revoke_old``, for a lost or leaked
    one; they are dropped from ``cache`` at once, and from other Den processes' caches within
    :data:`TOKEN_CACHE_TTL_S`). Without ``revoke_old`` the older tokens keep working."""
    user = find_user(session, who)
    revoked = 0
    if revoke_old:
        digests = list(session.scalars(select(Token.token_hash).where(Token.user_id == user.id).with_for_update()))
        session.execute(delete(Token).where(Token.user_id == user.id))
        for digest in digests:
            if cache is not None:
                cache.discard(digest)
        revoked = len(digests)
    return user, _issue_token(session, user), revoked


def revoke_token(caller: Caller) -> bool:
    """Revoke the token this request was made with (log out); whether it was still there to revoke."""
    result = caller.session.execute(delete(Token).where(Token.id == caller.token_id))
    if caller.token_cache is not None:
        caller.token_cache.discard(caller.token_hash)
    return bool(getattr(result, "rowcount", 0))


def find_user(session: Session, who: str) -> User:
    """The user named ``who``, or whose email is ``who``; :class:`ObjectNotFoundError` (404) if none."""
    if not isinstance(who, str) or not who or len(who) > MAX_EMAIL_LENGTH or not who.isprintable():
        raise BadRequestError(f"Invalid user {str(who)[:100]!r}: expected a user name or an email")
    column = User.email if "@" in who else User.name
    user = session.scalar(select(User).where(column == who))
    if user is None:
        raise ObjectNotFoundError(f"no Den user {who!r}")
    return user


def me(caller: Caller) -> dict[str, object]:
    """The caller's name, email and orgs."""
    orgs = [{"name": name, "role": role} for name, role in sorted(caller.orgs.items())]
    return {"name": caller.name, "email": caller.user.email, "orgs": orgs}


def _org(session: Session, name: str) -> Org:
    validate_owner_name(name, "org")
    org = session.scalar(select(Org).where(Org.name == name))
    if org is None:
        raise ObjectNotFoundError(f"no Den org {name!r}")
    return org


def _set_member(session: Session, org: Org, user: User, role: str) -> None:
    if role not in ROLES:
        raise BadRequestError(f"Invalid role {role!r}: expected one of {', '.join(ROLES)}")
    membership = session.get(Membership, (org.id, user.id))
    if membership is None:
        session.add(Membership(org_id=org.id, user_id=user.id, role=role))
    else:
        membership.role = role


def add_org(session: Session, name: str, members: dict[str, str]) -> bool:
    """Create org ``name`` if it does not exist, and add or update ``members`` (user name to role), as a
    server administrator (counted against no user's :class:`OrgPolicy` limit); whether it was created."""
    validate_owner_name(name, "org")
    existing = session.scalar(select(Org).where(Org.name == name))
    org = existing or _new_org(session, name, None)
    for user_name, role in members.items():
        _set_member(session, org, find_user(session, user_name), role)
    session.flush()
    return existing is None


def org_members(session: Session, name: str) -> list[dict[str, str]]:
    """The members of org ``name`` by user name, with their roles (no access check: callers check)."""
    rows = session.execute(
        select(User.name, Membership.role).join(Membership).join(Org, Org.id == Membership.org_id)
        .where(Org.name == name).order_by(User.name)
    )
    return [{"user": user, "role": role} for user, role in rows]


def _new_org(session: Session, name: str, created_by: int | None) -> Org:
    _claim_owner_name(session, name, "org")
    org = Org(name=name, created_at=utcnow(), created_by=created_by)
    session.add(org)
    session.flush()
    return org


def create_org(caller: Caller, name: str, policy: OrgPolicy = OrgPolicy()) -> dict[str, object]:
    """A new org with the caller as its admin, if ``policy`` lets the caller create one more."""
    validate_owner_name(name, "org")
    if not policy.users_create_orgs:
        raise PermissionDeniedError(
            f"this Den lets only its administrators create orgs: ask one to run `runhouse den org add {name}`")
    # The caller's row, locked: their concurrent requests count their orgs one after the other.
    caller.session.execute(select(User.id).where(User.id == caller.user.id).with_for_update())
    created = caller.session.scalar(select(func.count()).select_from(Org).where(Org.created_by == caller.user.id))
    if created is not None and created >= policy.max_orgs_per_user:
        raise PermissionDeniedError(
            f"{caller.name} has created {created} orgs; this Den lets a user create at most "
            f"{policy.max_orgs_per_user}: ask a Den administrator for more (`runhouse den org add`)")
    org = _new_org(caller.session, name, caller.user.id)
    caller.session.add(Membership(org_id=org.id, user_id=caller.user.id, role="admin"))
    caller._orgs = None
    return org_info(caller, name)


def org_info(caller: Caller, name: str) -> dict[str, object]:
    """An org and its members; only members may see it."""
    _org(caller.session, name)
    if name not in caller.orgs:
        raise PermissionDeniedError(f"{caller.name} is not a member of org {name!r}")
    return {"name": name, "members": org_members(caller.session, name)}


def _require_admin(caller: Caller, org: Org) -> None:
    if caller.orgs.get(org.name) != "admin":
        raise PermissionDeniedError(f"only admins of org {org.name!r} may change its members; {caller.name} is not")


def set_member(caller: Caller, org_name: str, who: str, role: str) -> dict[str, object]:
    """Add ``who`` to the org or change their role; org admins only."""
    org = _org(caller.session, org_name)
    _require_admin(caller, org)
    user = find_user(caller.session, who)
    if role != "admin" and user.id == caller.user.id:
        _keep_an_admin(caller.session, org, user)
    _set_member(caller.session, org, user, role)
    caller._orgs = None
    return org_info(caller, org_name)


def remove_member(caller: Caller, org_name: str, who: str) -> dict[str, object]:
    """Remove ``who`` from the org; org admins only, and never its last admin."""
    org = _org(caller.session, org_name)
    _require_admin(caller, org)
    user = find_user(caller.session, who)
    membership = caller.session.get(Membership, (org.id, user.id))
    if membership is None:
        raise ObjectNotFoundError(f"{user.name} is not a member of org {org_name!r}")
    _keep_an_admin(caller.session, org, user)
    caller.session.delete(membership)
    caller.session.flush()
    caller._orgs = None
    return org_info(caller, org_name) if user.id != caller.user.id else {"name": org_name, "members": []}


def _keep_an_admin(session: Session, org: Org, leaving: User) -> None:
    admins = session.scalars(select(Membership.user_id).where(Membership.org_id == org.id, Membership.role == "admin"))
    if set(admins) == {leaving.id}:
        raise ConflictError(f"{leaving.name} is the last admin of org {org.name!r}; make another member admin first")

