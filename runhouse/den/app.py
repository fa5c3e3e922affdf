"""Den's HTTP API: thin FastAPI routes over :mod:`runhouse.den.service`, one transaction per request.

Every route under ``/v1`` needs ``Authorization: Bearer <token>``; ``/health``, ``/openapi.json`` and
``/docs`` do not. Addresses go last in the path (``/v1/resources/alice/proj/fn`` is ``/alice/proj/fn``), so
any resource name works after an operation's fixed prefix. Every error is a JSON body
``{"error": {"type": ..., "message": ...}}`` with a 4xx status for anything the caller can fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runhouse import __version__
from runhouse.den import DEFAULT_HOST, DEFAULT_PORT, auth, secret_store, service
from runhouse.den.auth import Caller
from runhouse.den.crypto import SecretBox
from runhouse.den.db import Database
from runhouse.den.service import MAX_CONFIG_BYTES, MAX_SHARE_USERS
from runhouse.errors import RunhouseError

logger = logging.getLogger(__name__)

# Whole request bodies are capped a little above the config cap, so oversize configs get a precise 413.
MAX_BODY_BYTES = 2 * MAX_CONFIG_BYTES
MAX_INT = 2**31 - 1
_TYPE_BY_STATUS = {
    400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError", 404: "NotFoundError",
    405: "MethodNotAllowedError", 409: "ConflictError", 413: "PayloadTooLargeError",
}


class _AddressConvertor(Convertor[str]):
    """Like ``{name:path}``, but matching any character, so names with control characters reach the
    address parser and get its 400 instead of a 404 for no route."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("address", _AddressConvertor())

# ------------------------------------------------------------------------------------------- models


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorInfo(BaseModel):
    type: str = Field(description="The error's class name, e.g. PermissionDeniedError")
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    error: ErrorInfo


class Health(BaseModel):
    status: str
    version: str
    schema_version: int


class OrgRole(BaseModel):
    name: str
    role: str


class Me(BaseModel):
    name: str
    email: str | None
    orgs: list[OrgRole]


class NewToken(BaseModel):
    token: str = Field(description="Shown once: Den stores only its hash")


class OrgCreate(_Body):
    name: str


class MemberRole(_Body):
    role: Literal["admin", "member"] = "member"


class OrgMember(BaseModel):
    user: str
    role: str


class OrgOut(BaseModel):
    name: str
    members: list[OrgMember]


class ResourcePut(_Body):
    config: dict[str, Any] = Field(description=f"The resource's config; at most {MAX_CONFIG_BYTES:,} bytes as JSON")


class ResourceSummary(BaseModel):
    address: str
    resource_type: str
    public: bool
    current_version: int
    created_at: datetime
    updated_at: datetime


class ResourceOut(ResourceSummary):
    version: int
    author: str
    saved_at: datetime
    config: dict[str, Any]


class Visibility(_Body):
    public: bool


class VersionInfo(BaseModel):
    version: int
    author: str
    saved_at: datetime


class History(ResourceSummary):
    versions: list[VersionInfo]


class Rollback(_Body):
    version: int = Field(ge=1, le=MAX_INT)


class FolderEntry(BaseModel):
    name: str
    address: str
    kind: Literal["resource", "folder"]
    resource_type: str
    updated_at: datetime


class FolderListing(BaseModel):
    folder: str
    entries: list[FolderEntry]


class ShareRequest(_Body):
    users: list[str] = Field(min_length=1, max_length=MAX_SHARE_USERS, description="User names or emails")
    access_level: Literal["read", "write"] = "read"
    notify: bool = Field(False, description="Accepted for compatibility; Den sends no mail")


class ShareInfo(BaseModel):
    address: str
    user: str
    access_level: str
    granted_by: str
    created_at: datetime


class Shares(BaseModel):
    address: str
    shares: list[ShareInfo]


class AuditItem(BaseModel):
    id: int
    time: datetime
    user: str
    action: str
    address: str
    detail: dict[str, Any]


class AuditLog(BaseModel):
    entries: list[AuditItem]


class Defaults(_Body):
    defaults: dict[str, Any]


class SecretPut(_Body):
    provider: str = Field(description="aws, gcp, huggingface, ... or any custom name")
    values: dict[str, Any] = Field(description="The credentials; stored encrypted with Den's server key")


class SecretSummary(BaseModel):
    owner: str
    name: str
    provider: str
    updated_by: str
    updated_at: datetime


class SecretOut(SecretSummary):
    values: dict[str, Any]


class SecretList(BaseModel):
    owner: str
    secrets: list[SecretSummary]


# ------------------------------------------------------------------------ authentication and transactions

# The token is read straight from the header in _call (FastAPI's security dependency costs about 0.2 ms a
# request); create_app adds the scheme to the OpenAPI schema.
_SECURITY_SCHEME = {"type": "http", "scheme": "bearer",
                    "description": "A token from `runhouse den user add` or POST /v1/tokens"}


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def _call(request: Request, action: Callable[[Caller], Any], read_only: bool = False) -> JSONResponse:
    """Authenticate and run ``action`` in one transaction; what it returns is the JSON body. The routes'
    response models document it; it is not validated again.

    ``read_only`` requests run in a read-only transaction and queue their audit entries. On PostgreSQL the
    transaction runs in the threadpool, so requests overlap while they wait on the database. SQLite work is
    local and holds the GIL nearly throughout, so it runs right here: a thread handoff would cost more than
    it lets overlap (measured: 4.4 ms against 3.4 ms per load, bench/den.py).
    """

    database: Database = request.app.state.database
    token = _bearer_token(request)

    def work(session: Session) -> tuple[Any, list[dict[str, Any]]]:
        caller = auth.authenticate(session, token, read_only, request.app.state.token_cache)
        return action(caller), caller.queued_audit

    def run() -> Any:
        result, audit = database.run(work, read_only=read_only)
        database.audit.add(audit)
        return result

    return JSONResponse(run() if database.is_sqlite else await run_in_threadpool(run))


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "BadRequestError or InvalidNameError: a malformed address, body or parameter",
        401: "AuthenticationError: a missing or unknown token",
        403: "PermissionDeniedError: the caller may not do this here",
        404: "ObjectNotFoundError: no such resource, version, user or share (NotFoundError: no such route)",
        409: "ConflictError: the name is taken, or concurrent changes kept winning",
        413: "PayloadTooLargeError: a config over 1 MiB, or a body over 2 MiB",
        422: "ValidationError: the body or parameters do not fit the schema (see details)",
    }.items()
}
router = APIRouter(prefix="/v1", responses=_ERRORS)


# ------------------------------------------------------------------------------------------- routes


@router.get("/me", response_model=Me, tags=["accounts"])
async def get_me(request: Request) -> Any:
    """Who the token belongs to, and their orgs."""
    return await _call(request, auth.me, read_only=True)


@router.post("/tokens", response_model=NewToken, tags=["accounts"])
async def create_token(request: Request) -> Any:
    """A new token for the caller (another machine, say); shown once."""
    return await _call(request, lambda caller: {"token": auth.create_token(caller)})


@router.delete("/tokens/current", tags=["accounts"])
async def revoke_token(request: Request) -> Any:
    """Revoke the token of this request (log out)."""
    return await _call(request, lambda caller: {"revoked": auth.revoke_token(caller)})


@router.post("/orgs", response_model=OrgOut, tags=["orgs"])
async def create_org(body: OrgCreate, request: Request) -> Any:
    """A new org, with the caller as its admin."""
    return await _call(request, lambda caller: auth.create_org(caller, body.name))


@router.get("/orgs/{org}", response_model=OrgOut, tags=["orgs"])
async def get_org(org: str, request: Request) -> Any:
    """An org and its members (members only)."""
    return await _call(request, lambda caller: auth.org_info(caller, org), read_only=True)


@router.put("/orgs/{org}/members/{user}", response_model=OrgOut, tags=["orgs"])
async def set_member(org: str, user: str, body: MemberRole, request: Request) -> Any:
    """Add a member or change their role (org admins only)."""
    return await _call(request, lambda caller: auth.set_member(caller, org, user, body.role))


@router.delete("/orgs/{org}/members/{user}", response_model=OrgOut, tags=["orgs"])
async def remove_member(org: str, user: str, request: Request) -> Any:
    """Remove a member (org admins only; never the last admin)."""
    return await _call(request, lambda caller: auth.remove_member(caller, org, user))


@router.put("/resources/{address:address}", response_model=ResourceOut, tags=["resources"])
async def put_resource(address: str, body: ResourcePut, request: Request) -> Any:
    """Save a config at ``/address``: every put is a new version."""
    return await _call(request, lambda caller: service.put_resource(caller, "/" + address, body.config))


@router.get("/resources/{address:address}", response_model=ResourceOut, tags=["resources"])
async def get_resource(
    address: str, request: Request, version: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None
) -> Any:
    """The current config at ``/address``, or the given version."""
    return await _call(request, lambda caller: service.get_resource(caller, "/" + address, version), read_only=True)


@router.patch("/resources/{address:address}", response_model=ResourceSummary, tags=["resources"])
async def set_visibility(address: str, body: Visibility, request: Request) -> Any:
    """Make a resource readable by every logged-in user, or stop that."""
    return await _call(request, lambda caller: service.set_public(caller, "/" + address, body.public))


@router.delete("/resources/{address:address}", response_model=ResourceSummary, tags=["resources"])
async def delete_resource(address: str, request: Request) -> Any:
    """Delete a resource and all its versions."""
    return await _call(request, lambda caller: service.delete_resource(caller, "/" + address))


@router.get("/history/{address:address}", response_model=History, tags=["resources"])
async def history(address: str, request: Request) -> Any:
    """Every version of a resource: number, author and time."""
    return await _call(request, lambda caller: service.list_versions(caller, "/" + address), read_only=True)


@router.post("/rollback/{address:address}", response_model=ResourceOut, tags=["resources"])
async def rollback(address: str, body: Rollback, request: Request) -> Any:
    """Make an older version current again (saved as a new version)."""
    return await _call(request, lambda caller: service.rollback(caller, "/" + address, body.version))


@router.get("/folders/{address:address}", response_model=FolderListing, tags=["resources"])
async def list_folder(address: str, request: Request) -> Any:
    """The direct children of a folder that the caller may read."""
    return await _call(request, lambda caller: service.list_folder(caller, "/" + address), read_only=True)


@router.get("/shares/{address:address}", response_model=Shares, tags=["sharing"])
async def list_shares(address: str, request: Request) -> Any:
    """The shares in force at an address: on it and on the folders above it."""
    return await _call(request, lambda caller: service.list_shares(caller, "/" + address), read_only=True)


@router.put("/shares/{address:address}", response_model=Shares, tags=["sharing"])
async def share(address: str, body: ShareRequest, request: Request) -> Any:
    """Share a resource or a folder (and all under it) with users, read or write."""
    return await _call(request, lambda caller: service.share(caller, "/" + address, body.users, body.access_level))


@router.delete("/shares/{address:address}", response_model=Shares, tags=["sharing"])
async def unshare(
    address: str, request: Request,
    users: Annotated[list[str], Query(min_length=1, max_length=MAX_SHARE_USERS)],
) -> Any:
    """Remove users' shares on exactly this address (``?users=bob&users=carol``)."""
    return await _call(request, lambda caller: service.unshare(caller, "/" + address, users))


@router.get("/audit", response_model=AuditLog, tags=["audit"])
async def audit_log(
    request: Request,
    prefix: Annotated[str | None, Query(description="An address; entries on it and under it")] = None,
    user: Annotated[str | None, Query(description="Who acted")] = None,
    action: Annotated[str | None, Query(description=", ".join(service.ACTIONS))] = None,
    since: Annotated[datetime | None, Query(description="Inclusive, ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="Exclusive, ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_AUDIT_LIMIT)] = 100,
) -> Any:
    """Audit entries the caller may see, newest first."""
    await run_in_threadpool(request.app.state.database.audit.flush)  # so reads queued a moment ago are listed too
    return await _call(
        request, lambda caller: service.audit_log(caller, prefix, user, action, since, until, limit), read_only=True
    )


@router.get("/defaults", response_model=Defaults, tags=["defaults"])
async def get_defaults(request: Request) -> Any:
    """The caller's stored config defaults."""
    return await _call(request, service.get_defaults, read_only=True)


@router.put("/defaults", response_model=Defaults, tags=["defaults"])
async def put_defaults(body: Defaults, request: Request) -> Any:
    """Replace the caller's config defaults."""
    return await _call(request, lambda caller: service.put_defaults(caller, body.defaults))


@router.get("/secrets/{owner}", response_model=SecretList, tags=["secrets"])
async def list_secrets(owner: str, request: Request) -> Any:
    """The names and providers of an owner's secrets (a user's own, or an org's for its members); no values."""
    return await _call(request, lambda caller: secret_store.list_secrets(caller, owner), read_only=True)


@router.get("/secrets/{owner}/{name}", response_model=SecretOut, tags=["secrets"])
async def get_secret(owner: str, name: str, request: Request) -> Any:
    """A secret with its values."""
    box = request.app.state.secret_box
    return await _call(request, lambda caller: secret_store.get_secret(caller, box, owner, name), read_only=True)


@router.put("/secrets/{owner}/{name}", response_model=SecretSummary, tags=["secrets"])
async def put_secret(owner: str, name: str, body: SecretPut, request: Request) -> Any:
    """Store or replace a secret; the values are encrypted before they reach the database."""
    box = request.app.state.secret_box
    return await _call(request, lambda caller: secret_store.put_secret(caller, box, owner, name, body.provider,
                                                                  body.values))


@router.delete("/secrets/{owner}/{name}", response_model=SecretSummary, tags=["secrets"])
async def delete_secret(owner: str, name: str, request: Request) -> Any:
    """Delete a secret."""
    return await _call(request, lambda caller: secret_store.delete_secret(caller, owner, name))


# ------------------------------------------------------------------------------------------- errors


def _error(status: int, type_name: str, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": type_name, "message": message}
    if details is not None:
        body["details"] = details
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def _runhouse_error(_request: Request, exc: Exception) -> JSONResponse:
    status = getattr(exc, "status", None) or (400 if isinstance(exc, ValueError) else 500)
    return _error(status, type(exc).__name__, str(exc))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    invalid_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if invalid_json is not None:
        reason = (invalid_json.get("ctx") or {}).get("error", "")
        return _error(400, "BadRequestError", f"the request body is not valid JSON: {reason}".rstrip(": "))
    details = [{"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")),
                "type": str(e.get("type", ""))} for e in errors]
    summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)
    return _error(422, "ValidationError", f"invalid request: {summary}", details)


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


def create_app(database: Database, secret_box: SecretBox | None = None) -> FastAPI:
    """The Den ASGI app over ``database`` (already migrated); secrets are sealed with ``secret_box``
    (default: :meth:`SecretBox.load`, the key from the environment or the key file).

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
    app.state.database = database
    app.state.secret_box = secret_box or SecretBox.load()
    app.state.token_cache = auth.TokenCache()
    app.include_router(router)

    def openapi_with_bearer() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {"HTTPBearer": _SECURITY_SCHEME}
            for path, operations in schema["paths"].items():
                for operation in operations.values() if path.startswith(router.prefix) else ():
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
          access_log: bool = False, secret_box: SecretBox | None = None) -> None:
    """Serve Den over ``database`` (migrated first) until interrupted.

    ``access_log`` logs every request (about 0.2 ms each); the audit log records who did what either way.
    """
    database.migrate()
    uvicorn.run(create_app(database, secret_box), host=host, port=port, log_level=log_level,
                access_log=access_log)
