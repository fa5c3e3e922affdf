"""What every page of the web UI shares: templates, security headers, sessions, CSRF, the access check, errors.

A signed-in browser sends only a session cookie (a random id, HttpOnly, SameSite=Strict). :func:`show` and
:func:`change` turn it back into the user's Den token server-side (:func:`runhouse.den.ui.queries.session_token`)
and run the page's action through :func:`runhouse.den.access.run_as_caller` with that token, exactly as the
JSON API runs a request that carried it: the same authentication, the same permission checks in the library.

Every form that changes something carries the session's CSRF token (refused without it). Templates escape
everything (Jinja2 autoescape), pages send a Content-Security-Policy with no script at all, and are never
cached. A mistake in the input is a page with the error and its 4xx status, never a 500.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader
from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from runhouse.den.access import run_as_caller
from runhouse.den.auth import Caller
from runhouse.den.db import Database
from runhouse.den.ui import queries
from runhouse.errors import AuthenticationError, BadRequestError, PermissionDeniedError, RunhouseError

T = TypeVar("T")
SESSION_COOKIE = "rh_session"
SIGNIN_COOKIE = "rh_signin"
"""The sign-in form's CSRF token (double-submitted: cookie and form field), before there is a session."""
PREFIX = "/ui"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
MAX_FIELD_LENGTH = 1024


def _when(value: str | None) -> str:
    """A stored time in ISO 8601 (``2026-12-02T03:10:05.123456+00:00``, always UTC) as ``2026-12-02 03:10:05 UTC``."""
    return f"{value[:10]} {value[11:19]} UTC" if value else "never"


def href(address: str) -> str:
    """An address as a URL path (each character that is not safe in one escaped)."""
    return quote(address, safe="/")


templates = Environment(loader=PackageLoader("runhouse.den.ui", "templates"), autoescape=True,
                        trim_blocks=True, lstrip_blocks=True)
templates.filters.update(when=_when, href=href, query=urlencode)


@dataclass(frozen=True)
class Visit:
    """A signed-in browser: its session id (from the cookie) and the Den token it stands for."""

    session_id: str
    token: str

    @property
    def csrf(self) -> str:
        return queries.csrf_token(self.session_id)


# ------------------------------------------------------------------------------------------ answers


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """``template`` rendered with ``context``, with the security headers."""
    return HTMLResponse(templates.get_template(template).render(**context), status_code=status,
                        headers=SECURITY_HEADERS)


def user_page(template: str, caller: Caller, visit: Visit, status: int = 200, **context: Any) -> HTMLResponse:
    """A page for a signed-in user: the navigation shows who they are, forms carry their CSRF token."""
    return page(template, status, me=caller.name, csrf=visit.csrf, **context)


def error_page(error: Exception, visit: Visit | None, status: int | None = None) -> HTMLResponse:
    """The error's message on a page, with its status (400 for a mistake without one)."""
    code = status or getattr(error, "status", None) or 400
    return page("error.html", code, error=str(error), kind=type(error).__name__, code=code,
                me=visit is not None, csrf=visit.csrf if visit is not None else "")


def see(url: str) -> RedirectResponse:
    """After a change: go to ``url`` (303, so the browser GETs it)."""
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def to_signin(request: Request) -> RedirectResponse:
    """To the sign-in page, coming back here afterwards."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = see(f"{PREFIX}/signin?{urlencode({'next': here})}")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a page of the UI, never another site."""
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/folders"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """An HttpOnly, SameSite=Strict cookie for the UI's paths (Secure over HTTPS)."""
    response.set_cookie(name, value, max_age=max_age, path=PREFIX, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def new_signin_token() -> str:
    """A fresh CSRF token for the sign-in form."""
    return secrets.token_urlsafe(24)


# ------------------------------------------------------------------------------------ the one check


def _with_token(request: Request, token: str) -> Request:
    """``request`` as if it carried ``Authorization: Bearer <token>`` (and no other authorization)."""
    headers = [(key, value) for key, value in request.scope["headers"] if key != b"authorization"]
    headers.append((b"authorization", f"Bearer {token}".encode()))
    return Request({**request.scope, "headers": headers}, request.receive)


async def as_token(request: Request, token: str, action: Callable[[Caller], T], read_only: bool = True,
                   grows: bool = False) -> T:
    """``action`` as the user of ``token``, through :func:`runhouse.den.access.run_as_caller`."""
    return await run_as_caller(_with_token(request, token), action, read_only=read_only, grows=grows)


async def visit_of(request: Request) -> Visit | None:
    """The signed-in browser of ``request``, or None (no cookie, or an expired, ended or revoked session)."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        return None
    database: Database = request.app.state.database
    box = request.app.state.secret_box

    def find() -> str | None:
        return queries.session_token(database, box, session_id)

    token = find() if database.is_sqlite else await run_in_threadpool(find)
    return Visit(session_id, token) if token is not None else None


async def _run(request: Request, visit: Visit, action: Callable[[Caller], Response], read_only: bool,
               grows: bool) -> Response:
    try:
        return await as_token(request, visit.token, action, read_only, grows)
    except AuthenticationError:  # the token was revoked since the session was read
        return to_signin(request)
    except RunhouseError as exc:
        return error_page(exc, visit)
    except DataError as exc:
        reason = str(getattr(exc, "orig", exc)).splitlines()[0]
        return error_page(BadRequestError(f"the database rejected a value: {reason}"), visit)


async def show(request: Request, render: Callable[[Caller, Visit], Response], grows: bool = False) -> Response:
    """A page: ``render`` runs as the signed-in user in a read-only transaction (in a worker thread when it
    ``grows`` with the data: listings, histories, the audit log); to the sign-in page without a session."""
    visit = await visit_of(request)
    if visit is None:
        return to_signin(request)
    return await _run(request, visit, lambda caller: render(caller, visit), read_only=True, grows=grows)


async def change(request: Request, act: Callable[[Caller, Visit, FormData], Response]) -> Response:
    """A form's change: refused (403) without the session's CSRF token; ``act`` runs as the signed-in user
    in one write transaction and answers (usually :func:`see` the changed page)."""
    visit = await visit_of(request)
    if visit is None:
        return to_signin(request)
    form = await read_form(request)
    if isinstance(form, Exception):
        return error_page(form, visit)
    if not hmac.compare_digest(str(form.get("csrf", "")), visit.csrf):
        return error_page(PermissionDeniedError(
            "this form's CSRF token is missing or wrong: reload the page and send the form again"), visit, 403)
    return await _run(request, visit, lambda caller: act(caller, visit, form), read_only=False, grows=False)


async def read_form(request: Request) -> FormData | BadRequestError:
    """The request's form, or the error that says why it could not be read."""
    try:
        return await request.form(max_files=0, max_fields=50)
    except HTTPException as exc:
        return BadRequestError(f"the form could not be read: {exc.detail}")


def field(form: FormData, name: str, required: bool = True) -> str:
    """A text field of ``form``, stripped; :class:`BadRequestError` when a required one is empty or missing."""
    value = form.get(name, "")
    if not isinstance(value, str) or len(value) > MAX_FIELD_LENGTH:
        raise BadRequestError(f"the field {name!r} must be text of at most {MAX_FIELD_LENGTH} characters")
    value = value.strip()
    if required and not value:
        raise BadRequestError(f"fill in the field {name!r}")
    return value


def number(text: str | None, what: str) -> int | None:
    """``text`` as a positive whole number (None when empty); :class:`BadRequestError` otherwise."""
    digits = (text or "").strip()
    if not digits:
        return None
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 9 or int(digits) < 1:
        raise BadRequestError(f"{what} must be a whole number from 1, got {digits[:50]!r}")
    return int(digits)
