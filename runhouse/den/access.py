"""Den's one access check: who is calling, and one transaction to act in as them.

Every HTTP surface of Den calls :func:`run_as_caller` from its handlers: the JSON API
(:mod:`runhouse.den.api.routes`) today, and a web UI router (``runhouse/den/ui/``) beside it, which renders
the same results as pages. A handler passes the action (a function of :class:`~runhouse.den.auth.Caller`
that calls :mod:`runhouse.den.service`, :mod:`runhouse.den.auth` or :mod:`runhouse.den.secret_store`);
permission checks stay in those libraries, so every surface enforces the same rules.

It reads ``request.app.state.database`` (a :class:`~runhouse.den.db.Database`),
``request.app.state.token_cache`` (an :class:`~runhouse.den.auth.TokenCache`) and
``request.app.state.growing_reads`` (an :class:`anyio.CapacityLimiter`), which
:func:`runhouse.den.app.create_app` sets. It is a plain call, not a FastAPI dependency: the security
dependency cost about 0.2 ms a request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from runhouse.den import auth
from runhouse.den.auth import Caller
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
    database: Database = request.app.state.database
    token = bearer_token(request)

    def work(session: Session) -> tuple[T, list[dict[str, Any]]]:
        caller = auth.authenticate(session, token, read_only, request.app.state.token_cache)
        return action(caller), caller.queued_audit

    def run() -> T:
        result, audit = database.run(work, read_only=read_only)
        database.audit.add(audit)
        return result

    if grows:
        return await anyio.to_thread.run_sync(run, limiter=request.app.state.growing_reads)
    return run() if database.is_sqlite else await run_in_threadpool(run)
