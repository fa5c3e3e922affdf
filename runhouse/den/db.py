"""Den's storage: SQLAlchemy 2.x models, the engine for SQLite or PostgreSQL, and ordered schema migrations.

Tables::

    schema_version   version (PK), description, applied_at          one row per applied migration
    users            id, name (unique), email (unique), created_at
    tokens           id, user_id -> users, token_hash (unique SHA-256 hex), created_at
    orgs             id, name (unique), created_at, created_by -> users (who created it through the API)
    owners           key (PK: the name case-folded), name, kind: "user" | "org"; one row per user and org
    memberships      (org_id -> orgs, user_id -> users) PK, role: "admin" | "member"
    resources        id, address (unique, e.g. /alice/proj/fn), owner, resource_type, public,
                     current_version, created_at, updated_at; on PostgreSQL also an index of address
                     with text_pattern_ops (its prefix LIKE, for folder listings)
    resource_versions id, resource_id -> resources (cascade), version, config (JSON), author, created_at;
                     unique (resource_id, version)
    shares           id, address (a resource or a folder), user_id -> users, access_level: "read" | "write",
                     granted_by, created_at; unique (address, user_id); index (user_id, address)
    audit_log        id, time, user, action, address, owner (the address's first part), detail (JSON);
                     indexes (time, id), (user, time, id), (owner, time, id)
    user_defaults    user_id (PK) -> users, defaults (JSON), updated_at
    secrets          id, owner (a user or org), name, provider, ciphertext (Fernet, see crypto.py),
                     updated_by, created_at, updated_at; unique (owner, name)
    cluster_keys     address (PK: a cluster's), key_hash (unique SHA-256 hex), created_by, created_at: the one
                     heartbeat key of a cluster whose daemon accepts Den tokens
    cluster_launches id, address, user, origin (user@host of the client), time; index (address, time)
    cluster_heartbeats address (PK), time, status (JSON): a cluster's last heartbeat
    cluster_usage    (address, user, hour) PK, calls: requests per caller per hour, from heartbeats
    web_sessions     id_hash (PK: SHA-256 hex of the cookie's session id), token_id -> tokens (cascade: a revoked
                     token ends its sessions), token_ciphertext (the token, sealed with the server key),
                     created_at, expires_at (indexed): the web UI's sign-ins

Times are naive UTC. Users and orgs share one namespace of owners (``/<owner>/...``), whose names are unique
regardless of case (the ``owners`` table's key), so no owner can match another's addresses where a database
compares text without case.

Every request runs in one transaction (:meth:`Database.run`). A request that writes starts on SQLite with
``BEGIN IMMEDIATE`` (one writer at a time, no lock upgrades that fail mid-request), on PostgreSQL at READ
COMMITTED with row locks where it reads then writes the same row. A read-only request starts a deferred
``BEGIN`` on SQLite (readers never wait for the write lock, WAL lets them run beside the writer) and runs in
autocommit on PostgreSQL (no BEGIN/COMMIT round trips). Audit entries of reads are not written in the read's
transaction but queued, and a background thread inserts them in batches (:class:`AuditWriter`).

The hottest reads (a resource by name) can skip the session altogether: :meth:`Database.fetch_one` runs one
Core ``SELECT`` from the event loop, on SQLite right there (local work, shorter than a thread handoff) and
on PostgreSQL through asyncpg (a pool of its own, prepared statements), so the loop waits on the network
without blocking and without a thread hop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, QueryableAttribute, Session, mapped_column, sessionmaker
from sqlalchemy.sql import ColumnElement, Select

from runhouse.den import ConflictError
from runhouse.den.files import den_folder
from runhouse.errors import ConfigError
from runhouse.lifetime import Closeable

T = TypeVar("T")
logger = logging.getLogger(__name__)

# How long a SQLite request waits for the write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Attempts of a request that lost a race (unique key taken, serialization failure) before it reports 409.
TRANSACTION_ATTEMPTS = 3
_RETRY_SQLSTATES = {"40001", "40P01"}  # PostgreSQL serialization failure, deadlock
_MIGRATION_LOCK_ID = 0x52484445  # "RHDE": PostgreSQL advisory lock held while migrating
# Connections for 32 concurrent clients without waiting on the pool; PostgreSQL ones are recycled hourly.
POOL_SIZE = 32
POOL_RECYCLE_S = 3600
# asyncpg (fetch_one on PostgreSQL): its connections (one event loop keeps a few queries in flight; each
# connection counts against PostgreSQL's max_connections), how long to wait for one, and for the pool to close.
ASYNC_POOL_SIZE = 8
ASYNC_CONNECT_TIMEOUT_S = 10.0
ASYNC_CLOSE_TIMEOUT_S = 5.0
# Queued audit entries are written at least this often, and at once when this many are waiting.
AUDIT_FLUSH_INTERVAL_S = 0.25
AUDIT_BATCH = 500
AUDIT_MAX_PENDING = 100_000  # beyond this (the database refusing writes), the oldest queued entries go
_READ_ONLY = "rh_read_only"  # execution option of read-only connections


def starts_with(session: Session, column: QueryableAttribute[str] | ColumnElement[str],
                prefix: str) -> ColumnElement[bool]:
    """SQL for ``column`` beginning with ``prefix``, exactly (case and every character as given) on both
    databases: SQLite's LIKE ignores ASCII case, so there it is the range of strings from ``prefix`` up to
    the next string that does not begin with it (SQLite compares text byte by byte), which an index serves;
    PostgreSQL's LIKE, with its wildcards escaped, is exact."""
    if session.get_bind().dialect.name == "sqlite":
        return and_(column >= prefix, column < prefix[:-1] + chr(ord(prefix[-1]) + 1))
    return column.startswith(prefix, autoescape=True)


def iso_text(session: Session, column: QueryableAttribute[datetime]) -> ColumnElement[str]:
    """SQL for a stored (naive UTC) time as the text ``runhouse.den.service.iso`` makes of it in Python (ISO
    8601 with ``+00:00``, no fraction for whole seconds), formatted by the database: for listings, where
    a thousand ``isoformat`` calls cost over a millisecond. Such texts sort in time order."""
    if session.get_bind().dialect.name == "sqlite":  # stored as text, 'YYYY-MM-DD HH:MM:SS.ffffff'
        iso = func.replace(type_coerce(column, String), " ", "T", type_=String)
    else:
        iso = func.to_char(column, 'YYYY-MM-DD"T"HH24:MI:SS.US', type_=String)
    return func.replace(iso + "+00:00", ".000000+", "+", type_=String)


def utcnow() -> datetime:
    """Now, as the naive UTC datetime Den stores."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of Den's tables."""


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    description: Mapped[str] = mapped_column(String(255))
    applied_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Org(Base):
    __tablename__ = "orgs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)


def owner_key(name: str) -> str:
    """``name`` case-folded: the key under which an owner name is unique (names are ASCII)."""
    return name.lower()


class Owner(Base):
    """Every user and org name under its :func:`owner_key`, so that no two differ only by case."""

    __tablename__ = "owners"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))


class Membership(Base):
    __tablename__ = "memberships"
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16))


class Resource(Base):
    __tablename__ = "resources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(1024), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    resource_type: Mapped[str] = mapped_column(String(255))
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    current_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ResourceVersion(Base):
    __tablename__ = "resource_versions"
    __table_args__ = (UniqueConstraint("resource_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    author: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Share(Base):
    __tablename__ = "shares"
    __table_args__ = (UniqueConstraint("address", "user_id"), Index("ix_shares_user_address", "user_id", "address"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(1024))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    access_level: Mapped[str] = mapped_column(String(16))
    granted_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    # Newest first, overall or for one user or one owner: each index walks one of them in that order.
    __table_args__ = (Index("ix_audit_log_time_id", "time", "id"),
                      Index("ix_audit_log_user_time", "user", "time", "id"),
                      Index("ix_audit_log_owner_time", "owner", "time", "id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    user: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(1024))
    owner: Mapped[str] = mapped_column(String(64), nullable=True)  # added by migration 4, filled for every row
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class UserDefaults(Base):
    __tablename__ = "user_defaults"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    defaults: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class StoredSecret(Base):
    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("owner", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(255))
    provider: Mapped[str] = mapped_column(String(64))
    ciphertext: Mapped[str] = mapped_column(Text)
    updated_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ClusterKey(Base):
    __tablename__ = "cluster_keys"
    address: Mapped[str] = mapped_column(String(1024), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ClusterLaunch(Base):
    __tablename__ = "cluster_launches"
    __table_args__ = (Index("ix_cluster_launches_address_time", "address", "time"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(1024))
    user: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(255))
    time: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ClusterHeartbeat(Base):
    __tablename__ = "cluster_heartbeats"
    address: Mapped[str] = mapped_column(String(1024), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    status: Mapped[dict[str, Any]] = mapped_column(JSON)


class ClusterUsage(Base):
    __tablename__ = "cluster_usage"
    address: Mapped[str] = mapped_column(String(1024), primary_key=True)
    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger)


class WebSession(Base):
    """A sign-in to the web UI (:mod:`runhouse.den.ui`): the cookie holds only the random session id."""

    __tablename__ = "web_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    token_ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


@dataclass(frozen=True)
class Migration:
    """One step of the schema: ``apply`` brings version ``version - 1`` to ``version``."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _create_tables(*tables: Table | str) -> Callable[[Connection], None]:
    # Each migration creates the tables it introduced (in this order), from the models by name. When a later
    # migration alters one of them, the earlier step creates it from a frozen copy instead (below), so that
    # new databases get exactly the tables of that version before migrating on, as old ones did.
    def apply(conn: Connection) -> None:
        for table in tables:
            (Base.metadata.tables[table] if isinstance(table, str) else table).create(conn)

    return apply


# Tables as an earlier migration made them, where a later one alters them (``users`` only for foreign keys).
_FROZEN = MetaData()
Table("users", _FROZEN, Column("id", Integer, primary_key=True))
_ORGS_1 = Table("orgs", _FROZEN, Column("id", Integer, primary_key=True),
                Column("name", String(64), nullable=False, unique=True), Column("created_at", DateTime, nullable=False))
_SHARES_1 = Table(
    "shares", _FROZEN, Column("id", Integer, primary_key=True), Column("address", String(1024), nullable=False),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("access_level", String(16), nullable=False), Column("granted_by", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False), UniqueConstraint("address", "user_id"),
)
_AUDIT_LOG_1 = Table(
    "audit_log", _FROZEN, Column("id", Integer, primary_key=True),
    Column("time", DateTime, nullable=False, index=True), Column("user", String(64), nullable=False, index=True),
    Column("action", String(32), nullable=False), Column("address", String(1024), nullable=False, index=True),
    Column("detail", JSON, nullable=False),
)


def _unique_owner_names(conn: Connection) -> None:
    """Migration 3: the ``owners`` table (refused while names differ only by case), and ``orgs.created_by``."""
    owners = [("user", name) for name in conn.scalars(text("SELECT name FROM users ORDER BY name"))]
    owners += [("org", name) for name in conn.scalars(text("SELECT name FROM orgs ORDER BY name"))]
    by_key: dict[str, list[tuple[str, str]]] = {}
    for kind, name in owners:
        by_key.setdefault(owner_key(name), []).append((kind, name))
    clashes = [" and ".join(f"{kind} {name!r}" for kind, name in group) for group in by_key.values() if len(group) > 1]
    if clashes:
        raise ConfigError(
            "Den cannot upgrade its database to schema version 3, where owner names (users and orgs) are unique "
            f"regardless of case: {len(clashes)} sets of names differ only by case: {'; '.join(clashes[:20])}"
            f"{' ...' if len(clashes) > 20 else ''}. Nothing was changed; rename or remove all but one name of "
            "each set in the database (with the resources under it), then start Den again"
        )
    Owner.__table__.create(conn)  # type: ignore[attr-defined]
    if owners:
        conn.execute(insert(Owner), [{"key": owner_key(name), "name": name, "kind": kind} for kind, name in owners])
    conn.execute(text("ALTER TABLE orgs ADD COLUMN created_by INTEGER REFERENCES users (id) ON DELETE SET NULL"))
    for index in Org.__table__.indexes:  # type: ignore[attr-defined]
        index.create(conn)


def _audit_by_owner(conn: Connection) -> None:
    """Migration 4: ``audit_log.owner`` (filled from the addresses) and the indexes that page the audit log in
    time order overall, by user and by owner; shares by user and address. Indexes no query uses any more go
    (each costs every audit write)."""
    conn.execute(text("ALTER TABLE audit_log ADD COLUMN owner VARCHAR(64)"))
    if conn.dialect.name == "postgresql":
        conn.execute(text("UPDATE audit_log SET owner = split_part(address, '/', 2)"))
    else:
        conn.execute(text("UPDATE audit_log SET owner = CASE WHEN instr(substr(address, 2), '/') = 0 "
                          "THEN substr(address, 2) ELSE substr(address, 2, instr(substr(address, 2), '/') - 1) END"))
    for superseded in ("ix_audit_log_time", "ix_audit_log_user", "ix_audit_log_address", "ix_shares_user_id"):
        conn.execute(text(f"DROP INDEX {superseded}"))
    for table in ("audit_log", "shares"):
        for index in Base.metadata.tables[table].indexes:
            index.create(conn)


def _resource_prefix_index(conn: Connection) -> None:
    """Migration 7, on PostgreSQL: an index that serves :func:`starts_with` on resource addresses (folder
    listings), whose LIKE the unique index cannot serve unless the database's collation is C (seen: a scan of
    all 100,000 resources, 17 ms, for a folder of 100). SQLite's range already runs on the unique index."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("CREATE INDEX ix_resources_address_prefix ON resources (address text_pattern_ops)"))


MIGRATIONS: list[Migration] = [
    Migration(1, "users, tokens, orgs, resources, shares, audit log, defaults",
              _create_tables("users", "tokens", _ORGS_1, "memberships", "resources", "resource_versions", _SHARES_1,
                             _AUDIT_LOG_1, "user_defaults")),
    Migration(2, "secrets, encrypted with the server key", _create_tables("secrets")),
    Migration(3, "owner names unique regardless of case; who created each org", _unique_owner_names),
    Migration(4, "audit log by owner and by user in time order; shares by user", _audit_by_owner),
    Migration(5, "clusters: heartbeat keys, launches, last heartbeat, usage per user and hour",
              _create_tables("cluster_keys", "cluster_launches", "cluster_heartbeats", "cluster_usage")),
    Migration(6, "web UI sessions", _create_tables("web_sessions")),
    Migration(7, "resources by address prefix on PostgreSQL (folder listings)", _resource_prefix_index),
]
SCHEMA_VERSION = MIGRATIONS[-1].version


def default_url() -> str:
    """The SQLite file Den uses without ``--db``: ``<config dir>/den/den.sqlite``."""
    return f"sqlite:///{den_folder() / 'den.sqlite'}"


def normalize_url(url: str) -> str:
    """An SQLAlchemy URL: ``postgresql://`` uses psycopg 3, and a bare path means a SQLite file."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_file(url: str) -> Path | None:
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def _asyncpg_record_class() -> type:
    """asyncpg's record with its columns as attributes too, as SQLAlchemy's rows have them."""
    import asyncpg

    class Record(asyncpg.Record):  # type: ignore[misc]
        __slots__ = ()

        def __getattr__(self, name: str) -> Any:
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

    return Record


async def _json_columns(connection: Any) -> None:
    """JSON columns as Python values, as SQLAlchemy's ``JSON`` type gives them."""
    await connection.set_type_codec("json", schema="pg_catalog", encoder=json.dumps, decoder=json.loads)


class Database(Closeable):
    """Den's database: an engine, sessions, migrations and the one-transaction-per-request runner.

    Example::

        with Database("sqlite:///den.sqlite") as db:
            db.migrate()
            token = db.run(lambda session: add_user(session, "alice"))
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = normalize_url(url or default_url())
        self.is_sqlite = self.url.startswith("sqlite")
        try:
            self.engine: Engine = self._create_engine()
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"Den cannot open {make_url(self.url).render_as_string(hide_password=True)}: {exc}; "
                "for PostgreSQL install runhouse[postgres]"
            ) from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Read-only connections: a deferred BEGIN on SQLite, autocommit on PostgreSQL.
        self._read_engine = self.engine.execution_options(
            **({_READ_ONLY: True} if self.is_sqlite else {"isolation_level": "AUTOCOMMIT"}))
        self._audit: AuditWriter | None = None
        self._audit_lock = threading.Lock()
        # fetch_one on PostgreSQL: asyncpg's pool, being made or made (a task all first requests wait on), in
        # the event loop that first needed it; statements compiled for asyncpg.
        self._async_pool: asyncio.Task[Any] | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._record_class = None if self.is_sqlite else _asyncpg_record_class()
        self._compiled: dict[Select[Any], tuple[str, Any]] = {}

    def _create_engine(self) -> Engine:
        # No pre-ping (a round trip per request): a connection found dead is discarded and the request
        # retried by run().
        if not self.is_sqlite:
            import asyncpg  # noqa: F401 - fetch_one's driver: missing, it is the same ConfigError as psycopg

            return create_engine(self.url, pool_size=POOL_SIZE, max_overflow=POOL_SIZE, pool_recycle=POOL_RECYCLE_S)
        path = _sqlite_file(self.url)
        if path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # hashes and configs: owner only
        engine = create_engine(self.url, connect_args={"check_same_thread": False}, pool_size=POOL_SIZE,
                               max_overflow=POOL_SIZE)

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, start transactions, so DDL is transactional too.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                           f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")

        return engine

    def migrate(self) -> int:
        """Create or upgrade the schema in one transaction; returns the schema version now in force."""
        try:
            return self._migrate()
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise ConfigError(f"Den cannot use its database {self.display_url}: {reason}") from exc

    @property
    def display_url(self) -> str:
        """The database URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def _migrate(self) -> int:
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            SchemaVersion.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]
            current = conn.scalar(select(func.max(SchemaVersion.version))) or 0
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"Den's database is at schema version {current}, newer than this runhouse knows "
                    f"({SCHEMA_VERSION}): upgrade runhouse"
                )
            for migration in MIGRATIONS[current:]:
                migration.apply(conn)
                conn.execute(
                    insert(SchemaVersion).values(
                        version=migration.version, description=migration.description, applied_at=utcnow()
                    )
                )
            return SCHEMA_VERSION

    def schema_version(self) -> int:
        """The highest migration applied to this database (0 when none), read without waiting for writers."""
        with self.transaction(read_only=True) as session:
            return session.scalar(select(func.max(SchemaVersion.version))) or 0

    @contextmanager
    def transaction(self, read_only: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any exception.

        ``read_only`` transactions must not write (see the module docstring for what they do instead).
        """
        if not read_only:
            with self._sessions() as session, session.begin():
                yield session
            return
        # The session begins on its first query (a deferred BEGIN on SQLite, nothing in autocommit) and the
        # connection ends it with a rollback on its way back to the pool: there is nothing to commit.
        with self._read_engine.connect() as conn, self._sessions(bind=conn) as session:
            yield session

    async def fetch_one(self, statement: Select[Any], params: dict[str, Any]) -> Any:
        """The first row of a read-only ``statement`` (a Core select, built once: it is compiled once per
        database) with bind ``params``, its columns as attributes, or None; for the hottest reads, which
        need no session.

        On SQLite it runs right here, in a read-only transaction; on PostgreSQL through asyncpg from the
        running event loop, retried once on a connection found dead (the database restarted, say), after
        marking every pooled connection to be opened anew.
        """
        if self.is_sqlite:
            with self._read_engine.connect() as conn:
                return conn.execute(statement, params).first()
        sql, compiled = self._compiled.get(statement) or self._compile(statement)
        values = compiled.construct_params(params)
        args = [values[name] for name in compiled.positiontup]
        import asyncpg

        for attempt in (1, 2):
            pool = await self._pool()
            try:
                return await pool.fetchrow(sql, *args, record_class=self._record_class)
            # A connection the server ended: found closed, told of it, or caught mid-message (asyncpg's
            # protocol then refuses the query with an internal error).
            except (asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, asyncpg.InterfaceError,
                    asyncpg.InternalClientError, ConnectionError):
                if attempt == 2:
                    raise
                await pool.expire_connections()
        raise AssertionError("unreachable")

    def _compile(self, statement: Select[Any]) -> tuple[str, Any]:
        compiled = statement.compile(dialect=asyncpg_dialect())
        self._compiled[statement] = entry = (str(compiled), compiled)
        return entry

    async def _pool(self) -> Any:
        """asyncpg's pool, made on first use in the running loop (Den serves from one loop), and made again
        after a failed attempt (the database was down, say)."""
        loop, task = asyncio.get_running_loop(), self._async_pool
        if task is None or self._async_loop is not loop or (task.done() and (task.cancelled() or task.exception())):
            task = loop.create_task(self._create_pool())
            self._async_loop, self._async_pool = loop, task
        return await task

    def run(self, work: Callable[[Session], T], attempts: int = TRANSACTION_ATTEMPTS, read_only: bool = False) -> T:
        """``work(session)`` in one transaction, retried when it lost a race with a concurrent request or
        its pooled connection turned out to be dead (the database restarted, say)."""
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction(read_only) as session:
                    return work(session)
            except DBAPIError as exc:
                lost_race = isinstance(exc, IntegrityError) or (
                    isinstance(exc, OperationalError) and getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES
                )
                if not (lost_race or exc.connection_invalidated):
                    raise
                if attempt == attempts:
                    if exc.connection_invalidated:
                        raise
                    raise ConflictError(
                        f"a concurrent request changed the same data {attempts} times in a row; retry"
                    ) from exc
        raise AssertionError("unreachable")

    @property
    def audit(self) -> AuditWriter:
        """The queue that writes audit entries of read-only requests in batches."""
        if self._audit is None:
            with self._audit_lock:
                if self._audit is None:
                    self._audit = AuditWriter(self)
        return self._audit

    async def _create_pool(self) -> Any:
        import asyncpg

        url = make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)
        return await asyncpg.create_pool(url, min_size=1, max_size=ASYNC_POOL_SIZE, init=_json_columns,
                                         timeout=ASYNC_CONNECT_TIMEOUT_S)

    def close(self) -> None:
        """Write queued audit entries, then close every pooled connection."""
        if self._audit is not None:
            self._audit.close()
            self._audit = None
        self._close_async_pool()
        self.engine.dispose()

    def _close_async_pool(self) -> None:
        task, loop, self._async_pool, self._async_loop = self._async_pool, self._async_loop, None, None
        if task is None or loop is None or not task.done() or task.cancelled() or task.exception() is not None:
            return
        if loop.is_closed():
            return  # a closed loop closed the pool's connections with it
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(task.result().close(), loop).result(ASYNC_CLOSE_TIMEOUT_S)
        else:
            task.result().terminate()



class AuditWriter:
    """Audit entries queued by read-only requests, inserted in batches by a background thread.

    Reads stay out of the write lock this way. An entry is in the database within
    :data:`AUDIT_FLUSH_INTERVAL_S`, or as soon as :meth:`flush` returns (the audit API flushes before it
    queries, so a caller always sees their own reads); a process killed outright loses at most that window.
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # guards _pending
        self._write_lock = threading.Lock()  # one batch insert at a time, in queue order
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="den-audit", daemon=True)
        self._thread.start()

    def add(self, entries: list[dict[str, Any]]) -> None:
        """Queue ``entries`` (``AuditEntry`` column values) to be inserted."""
        if not entries:
            return
        with self._lock:
            self._pending.extend(entries)
            overflow = len(self._pending) - AUDIT_MAX_PENDING
            if overflow > 0:  # the database has been unwritable for a long while: keep the newest
                del self._pending[:overflow]
                logger.error("Den dropped %d audit entries of reads: its database has refused writes", overflow)
            full = len(self._pending) >= AUDIT_BATCH
        if full:
            self._wake.set()

    def flush(self) -> None:
        """Insert everything queued so far, now."""
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                self._database.run(lambda session: session.execute(insert(AuditEntry), batch))
            except BaseException:
                with self._lock:
                    self._pending[:0] = batch
                raise

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(AUDIT_FLUSH_INTERVAL_S)
            self._wake.clear()
            try:
                self.flush()
            except (DBAPIError, ConflictError) as exc:  # keep the entries for the next round
                logger.warning("Den could not write queued audit entries yet, will retry: %s", exc)

    def close(self) -> None:
        """Stop the thread and write what is queued."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
