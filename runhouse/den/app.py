"""Den's ASGI app: :func:`create_app` puts the routers, the error answers and the body-size limit together.

The seam for another HTTP surface: routers sit side by side in :data:`ROUTERS`: the JSON API
(:mod:`runhouse.den.api`, under ``/v1``) and the web UI (:mod:`runhouse.den.ui`, under ``/ui``). Every
router's handlers reach the database only through the one access check,
:func:`runhouse.den.access.run_as_caller`, and call the library (:mod:`runhouse.den.service`,
:mod:`runhouse.den.auth`, :mod:`runhouse.den.secret_store`); this module adds what they share:

- errors: every error, from a router or from FastAPI, is the JSON envelope
  ``{"error": {"type", "message", "details"?}}`` of :func:`runhouse.protocol.error_envelope` (clients read it
  with :func:`runhouse.protocol.error_from_envelope`), with a 4xx status for anything the caller can fix (the
  web UI shows its own as pages);
- a request-body limit (:data:`MAX_BODY_BYTES`), checked before a body is read;
- ``/health`` (no token) and the OpenAPI schema at ``/openapi.json`` and ``/docs``, where the API's routes
  are marked as needing ``Authorization: Bearer <token>``.

Den adds no dependency and no middleware to a request's path but the body limit: the path is hot
(``bench/den.py``).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from types import FrameType
from typing import Any

import anyio
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runhouse.den import DEFAULT_HOST, DEFAULT_PORT, api, auth, ui
from runhouse.den.access import GROWING_READS_AT_ONCE, is_admin, run_as_caller
from runhouse.den.api.schemas import Health
from runhouse.den.crypto import SecretBox
from runhouse.den.db import Database
from runhouse.den.service import MAX_CONFIG_BYTES
from runhouse.errors import AuthenticationError, ConfigError, RunhouseError
from runhouse.protocol import error_envelope
from runhouse.version import __version__

logger = logging.getLogger(__name__)

# Whole request bodies are capped a little above the config cap, so oversize configs get a precise 413.
MAX_BODY_BYTES = 2 * MAX_CONFIG_BYTES
_TYPE_BY_STATUS = {
    400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError", 404: "NotFoundError",
    405: "MethodNotAllowedError", 409: "ConflictError", 413: "PayloadTooLargeError",
}

ADMIN_PREFIX = f"{api.router.prefix}/admin/"
ROUTERS: tuple[APIRouter, ...] = (api.router, ui.router)
"""The routers :func:`create_app` includes, side by side."""

# The bearer scheme, for the OpenAPI schema only: the access check reads the header itself (a FastAPI
# security dependency would cost about 0.2 ms a request).
_SECURITY_SCHEME = {"type": "http", "scheme": "bearer",
                    "description": "A token from `runhouse den user add` or POST /v1/tokens"}

# ------------------------------------------------------------------------------------------- errors


def _text(value: str) -> str:
    """``value`` safe to send as UTF-8: lone surrogates from the input are shown as ``\\udXXX`` escapes."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(status: int, type_name: str, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_envelope(type_name, _text(message), details), status_code=status, headers=headers)


async def _runhouse_error(_request: Request, exc: Exception) -> JSONResponse:
    status = getattr(exc, "status", None) or (400 if isinstance(exc, ValueError) else 500)
    return _error(status, type(exc).__name__, str(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # FastAPI reads the body before a route runs its access check: check the token first, so that callers
    # without a valid one learn nothing about the API's schema; on the admin routes, users learn nothing either.
    if not is_admin(request):
        try:
            await run_as_caller(request, _nothing, read_only=True)
        except AuthenticationError as denied:
            return _error(401, type(denied).__name__, str(denied))
        if request.url.path.startswith(ADMIN_PREFIX):
            return _error(403, "PermissionDeniedError", "Den's admin routes need its admin token")
    errors = exc.errors()
    invalid_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if invalid_json is not None:
        reason = (invalid_json.get("ctx") or {}).get("error", "")
        return _error(400, "BadRequestError", f"the request body is not valid JSON: {reason}".rstrip(": "))
    details = [{"loc": [_text(str(part)) for part in e.get("loc", ())], "msg": _text(str(e.get("msg", ""))),
                "type": str(e.get("type", ""))} for e in errors]
    summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)
    return _error(422, "ValidationError", f"invalid request: {summary}", details)


def _nothing(_caller: auth.Caller) -> None:
    """The action of a request that only needs its token checked."""


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}; the API is described at /docs"
    return _error(exc.status_code, _TYPE_BY_STATUS.get(exc.status_code, "HTTPError"), message)


async def _data_error(_request: Request, exc: Exception) -> JSONResponse:
    reason = str(getattr(exc, "orig", exc)).splitlines()[0]
    return _error(400, "BadRequestError", f"the database rejected a value: {reason}")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "InternalError", f"internal error in Den ({type(exc).__name__}); details are in its log")


class _BodyLimit:
    """Rejects request bodies over ``max_bytes`` with 413, declared or streamed, before they are read."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = _error(413, "PayloadTooLargeError", self._message()) if declared.isdigit() else _error(
                400, "BadRequestError", "the Content-Length header is not a number")
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is over {self.max_bytes:,} bytes; configs may be at most {MAX_CONFIG_BYTES:,}"


# ----------------------------------------------------------------------------------------- the app


def create_app(database: Database, secret_box: SecretBox | None = None,
               org_policy: auth.OrgPolicy | None = None, admin_token: str | None = None) -> FastAPI:
    """The Den ASGI app over ``database`` (already migrated); secrets are sealed with ``secret_box``
    (default: :meth:`SecretBox.load`, the key from the environment or the key file); users create orgs as
    ``org_policy`` allows (default: :class:`~runhouse.den.auth.OrgPolicy`); the ``/v1/admin`` routes take
    ``admin_token`` (default: none, so they refuse every request; ``runhouse den serve`` passes the one
    in its admin token file).

    Example::

        with Database("sqlite:///den.sqlite") as database:
            database.migrate()
            uvicorn.run(create_app(database), port=DEFAULT_PORT)
    """
    app = FastAPI(
        title="Den",
        version=__version__,
        description="runhouse's shared metadata service: resources by name with versions, sharing, audit, "
        "defaults. Send `Authorization: Bearer <token>`; errors are `{\"error\": {\"type\", \"message\"}}`.",
    )
    # What the access check (database, token_cache) and the routes (secret_box, org_policy) read from each
    # request's app.
    app.state.database = database
    app.state.secret_box = secret_box or SecretBox.load()
    app.state.org_policy = org_policy or auth.OrgPolicy()
    app.state.growing_reads = anyio.CapacityLimiter(GROWING_READS_AT_ONCE)
    app.state.token_cache = auth.TokenCache()
    app.state.admin_token_hash = auth.hash_token(admin_token) if admin_token else None
    for router in ROUTERS:
        app.include_router(router)

    def openapi_with_bearer() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {"HTTPBearer": _SECURITY_SCHEME}
            for path, operations in schema["paths"].items():
                for operation in operations.values() if path.startswith(api.router.prefix) else ():
                    operation["security"] = [{"HTTPBearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_with_bearer  # type: ignore[method-assign]

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> Any:
        """Liveness, without a token."""
        return {"status": "ok", "version": __version__, "schema_version": database.schema_version()}

    app.add_exception_handler(RunhouseError, _runhouse_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(_BodyLimit)
    return app


def serve(database: Database, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "info",
          access_log: bool = False, secret_box: SecretBox | None = None,
          org_policy: auth.OrgPolicy | None = None, admin_token: str | None = None,
          sock: socket.socket | None = None) -> None:
    """Serve Den over ``database`` (migrated first) until interrupted (SIGINT or SIGTERM), on ``sock`` if
    given (bound already, see :func:`listen`), else on ``host:port``.

    ``access_log`` logs every request (about 0.2 ms each); the audit log records who did what either way.
    """
    database.migrate()
    config = uvicorn.Config(create_app(database, secret_box, org_policy, admin_token), host=host, port=port,
                            log_level=log_level, access_log=access_log)
    # uvicorn shuts down gracefully on SIGINT and SIGTERM, then raises the signal again: as KeyboardInterrupt
    # for both, so that this returns and its callers clean up (``den serve`` removes its record).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)
    except KeyboardInterrupt:
        pass
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(_signal: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for :func:`serve`, so that a busy port is found before Den starts.

    Raises:
        ConfigError: the address cannot be bound (in use, or not this machine's).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"Den cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"Den cannot listen on {host}:{port}: {exc.strerror or exc}; stop what uses the "
                          "port or pass another --port") from None
    return sock
