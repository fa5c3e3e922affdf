"""Den's one access check: who is calling, and one transaction to act in as them.

Every HTTP surface of Den calls :func:`run_as_caller` from its handlers: the JSON API
(:mod:`runhouse.den.api.routes`) today, and a web UI router (``runhouse/den/ui/``) beside it, which renders
the same results as pages (:func:`run_read` adds a fast path in front of it for the hottest read). A handler
passes the action (a function of :class:`~runhouse.den.auth.Caller` that calls :mod:`runhouse.den.service`,
:mod:`runhouse.den.auth` or :mod:`runhouse.den.secret_store`); permission checks stay in those libraries, so
every surface enforces the same rules.

A cluster's daemon (its heartbeat key, no user) reports through :func:`run_as_cluster`, the same way.

Den's administrator (the admin token) acts through :func:`run_as_admin`, the same way: one transaction,
audit entries written with it. It reads ``request.app.state.admin_token_hash`` too (None: no admin).

It reads ``request.app.state.database`` (a :class:`~runhouse.den.db.Database`),
``request.app.state.token_cache`` (an :class:`~runhouse.den.auth.TokenCache`) and
``request.app.state.growing_reads`` (an :class:`anyio.CapacityLimiter`), which
:func:`runhouse.den.app.create_app` sets. It is a plain call, not a FastAPI dependency: the security
dependency cost about 0.2 ms a request.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from runhouse.den import auth, clusters
from runhouse.den.auth import Admin, Caller
from runhouse.den.clusters import ClusterReporter
from runhouse.den.db import Database

T = TypeVar("T")

GROWING_READS_AT_ONCE = 4
"""How many requests whose work grows with the data run at once; more wait their turn, so that they never
take every worker thread from other requests (and ``/health``)."""


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def run_as_caller(request: Request, action: Callable[[Caller], T], read_only: bool = False,
                        grows: bool = False) -> T:
    """Authenticate the request's bearer token and run ``action`` as that caller in one transaction.

    Returns what ``action`` returns; raises :class:`~runhouse.errors.AuthenticationError` for a missing or
    unknown token, and whatever ``action`` raises (the transaction is rolled back then).

    ``read_only`` actions run in a read-only transaction and queue their audit entries for the database's
    audit writer. On PostgreSQL the transaction runs in the threadpool, so requests overlap while they wait
    on the database. SQLite work is local and holds the GIL nearly throughout, so it runs right here: a
    thread handoff would cost more than it lets overlap (measured: 4.4 ms against 3.4 ms per load,
    bench/den.py), unless the action ``grows`` (its work grows with the data: listings, histories, the
    audit log), which would hold the event loop, and every other request with it, as long as it runs.
    Such actions run in a worker thread on both databases, at most :data:`GROWING_READS_AT_ONCE` at once.
    """
    token = bearer_token(request)

    def work(session: Session) -> tuple[T, list[dict[str, Any]]]:
        caller = auth.authenticate(session, token, read_only, request.app.state.token_cache)
        return action(caller), caller.queued_audit

    return await _run(request, work, read_only, grows)


async def run_read(request: Request, fast: Callable[[auth.Account], Awaitable[tuple[T, dict[str, Any]] | None]],
                   action: Callable[[Caller], T]) -> T:
    """A read with a fast path: when the request's token is in the token cache, ``fast(account)`` answers
    from the event loop without a session (one query, :meth:`~runhouse.den.db.Database.fetch_one`) with
    the answer and its audit entry, or None where it cannot decide alone; then, and for tokens not in the
    cache, :func:`run_as_caller` runs ``action`` read-only, which answers, or raises the error.

    ``fast`` must decide access exactly as ``action`` does (it is the same check in one query).
    """
    account = auth.cached_account(bearer_token(request), request.app.state.token_cache)
    if account is not None:
        found = await fast(account)
        if found is not None:
            result, entry = found
            request.app.state.database.audit.add([entry])
            return result
    return await run_as_caller(request, action, read_only=True)


async def run_as_cluster(request: Request, address: str, action: Callable[[ClusterReporter], T]) -> T:
    """Run ``action`` as the daemon of the cluster at ``address``, if the request's bearer token is that
    cluster's heartbeat key (:func:`runhouse.den.clusters.authenticate_key`: 401 otherwise), in one write
    transaction."""
    key = bearer_token(request)

    def work(session: Session) -> tuple[T, list[dict[str, Any]]]:
        reporter = clusters.authenticate_key(session, address, key)
        return action(reporter), reporter.queued_audit

    return await _run(request, work, read_only=False, grows=False)


async def run_as_admin(request: Request, action: Callable[[Admin], T]) -> T:
    """Run ``action`` as Den's administrator in one transaction, if the request's bearer token is the admin
    token (:func:`runhouse.den.auth.authenticate_admin`: 401 without a known token, 403 for a user's)."""
    token = bearer_token(request)

    def work(session: Session) -> tuple[T, list[dict[str, Any]]]:
        admin = auth.authenticate_admin(session, token, request.app.state.admin_token_hash,
                                        request.app.state.token_cache)
        return action(admin), admin.queued_audit

    return await _run(request, work, read_only=False, grows=False)


def is_admin(request: Request) -> bool:
    """Whether the request carries Den's admin token (compared in constant time)."""
    token, digest = bearer_token(request), request.app.state.admin_token_hash
    return bool(token) and digest is not None and hmac.compare_digest(auth.hash_token(token or ""), digest)


async def _run(request: Request, work: Callable[[Session], tuple[T, list[dict[str, Any]]]], read_only: bool,
               grows: bool) -> T:
    """``work`` in one transaction of the app's database, then its audit entries queued; where it runs is
    :func:`run_as_caller`'s rule."""
    database: Database = request.app.state.database

    def run() -> T:
        result, audit = database.run(work, read_only=read_only)
        database.audit.add(audit)
        return result

    if grows:
        return await anyio.to_thread.run_sync(run, limiter=request.app.state.growing_reads)
    return run() if database.is_sqlite else await run_in_threadpool(run)
