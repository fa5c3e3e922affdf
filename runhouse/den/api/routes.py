"""Den's JSON API: the ``/v1`` router, one thin route per operation.

Each route parses its path, query and body (models in :mod:`runhouse.den.api.schemas`), runs one call of
:mod:`runhouse.den.service`, :mod:`runhouse.den.auth` or :mod:`runhouse.den.secret_store` through the shared
access check :func:`runhouse.den.access.run_as_caller`, and returns its result as JSON. The result is not
validated again; the response models document it.

The ``/v1/admin`` routes are for Den's administrator only: they run through
:func:`runhouse.den.access.run_as_admin`, which takes only the admin token (401 without a known token, 403
for a user's).

Addresses go last in the path (``/v1/resources/alice/proj/fn`` is ``/alice/proj/fn``), so any resource
name works after an operation's fixed prefix; the ``address`` path convertor lets every character through
to the address parser, which answers a malformed name with 400 rather than a 404 for no route.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from runhouse.den import admin, auth, clusters, secret_store, service
from runhouse.den.access import run_as_admin, run_as_caller, run_as_cluster, run_read
from runhouse.den.api.schemas import (
    MAX_INT,
    AdminNewToken,
    AdminNewUser,
    AdminOrgOut,
    AdminOrgUpdate,
    AdminTokenCreate,
    AdminUserCreate,
    AuditLog,
    ClusterAccess,
    ClusterInfo,
    ClusterKeyOut,
    Defaults,
    ErrorBody,
    FolderListing,
    HeartbeatIn,
    HeartbeatOut,
    History,
    LaunchIn,
    LaunchOut,
    Me,
    MemberRole,
    NewToken,
    OrgCreate,
    OrgOut,
    ResourceOut,
    ResourcePut,
    ResourceSummary,
    Rollback,
    SecretList,
    SecretOut,
    SecretPut,
    SecretSummary,
    ShareRequest,
    Shares,
    Visibility,
)
from runhouse.den.service import MAX_SHARE_USERS


class _AddressConvertor(Convertor[str]):
    """Like ``{name:path}``, but matching any character, so names with control characters reach the
    address parser and get its 400 instead of a 404 for no route."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("address", _AddressConvertor())

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
"""Every route needs ``Authorization: Bearer <token>``; :func:`runhouse.den.app.create_app` includes it."""


def _json_response(content: Any) -> Response:
    """``content`` as JSON made by pydantic-core's encoder, about four times faster than :class:`JSONResponse`
    on a 1,000-entry listing. The bytes are the same (compact, UTF-8, the same escapes) but for floats, some
    written another way for the same number (``1e-05`` as ``0.00001``); NaN and infinities, which JSON
    lacks, become null, as in pydantic's own JSON (:class:`JSONResponse` refuses them with a 500)."""
    return Response(to_json(content, inf_nan_mode="null"), media_type="application/json")


async def _listing(request: Request, action: Callable[[auth.Caller], dict[str, Any]]) -> Response:
    """The answer of a read whose work grows with the data (a listing, a history, the audit log): its
    database work and its JSON are made in a worker thread, so the event loop keeps serving other requests."""
    return await run_as_caller(request, lambda caller: _json_response(action(caller)), read_only=True, grows=True)


# ------------------------------------------------------------------------------------------ resources
# First, and the load of a resource first of all: a request's route is found by trying each in turn.


@router.get("/resources/{address:address}", response_model=ResourceOut, tags=["resources"])
async def get_resource(
    address: str, request: Request, version: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None
) -> Any:
    """The current config at ``/address``, or the given version."""
    text, database = "/" + address, request.app.state.database
    result = await run_read(request, lambda account: service.load_resource(database, account, text, version),
                            lambda caller: service.get_resource(caller, text, version))
    return JSONResponse(result)


@router.put("/resources/{address:address}", response_model=ResourceOut, tags=["resources"])
async def put_resource(address: str, body: ResourcePut, request: Request) -> Any:
    """Save a config at ``/address``: every put is a new version."""
    result = await run_as_caller(request, lambda caller: service.put_resource(caller, "/" + address, body.config))
    return JSONResponse(result)


@router.patch("/resources/{address:address}", response_model=ResourceSummary, tags=["resources"])
async def set_visibility(address: str, body: Visibility, request: Request) -> Any:
    """Make a resource readable by every logged-in user, or stop that."""
    result = await run_as_caller(request, lambda caller: service.set_public(caller, "/" + address, body.public))
    return JSONResponse(result)


@router.delete("/resources/{address:address}", response_model=ResourceSummary, tags=["resources"])
async def delete_resource(address: str, request: Request) -> Any:
    """Delete a resource and all its versions."""
    return JSONResponse(await run_as_caller(request, lambda caller: service.delete_resource(caller, "/" + address)))


@router.get("/history/{address:address}", response_model=History, tags=["resources"])
async def history(address: str, request: Request) -> Any:
    """Every version of a resource: number, author and time."""
    return await _listing(request, lambda caller: service.list_versions(caller, "/" + address))


@router.post("/rollback/{address:address}", response_model=ResourceOut, tags=["resources"])
async def rollback(address: str, body: Rollback, request: Request) -> Any:
    """Make an older version current again (saved as a new version)."""
    result = await run_as_caller(request, lambda caller: service.rollback(caller, "/" + address, body.version))
    return JSONResponse(result)


@router.get("/folders/{address:address}", response_model=FolderListing, tags=["resources"])
async def list_folder(address: str, request: Request) -> Any:
    """The direct children of a folder that the caller may read."""
    return await _listing(request, lambda caller: service.list_folder(caller, "/" + address))


# ------------------------------------------------------------------------------------------- accounts


@router.get("/me", response_model=Me, tags=["accounts"])
async def get_me(request: Request) -> Any:
    """Who the token belongs to, and their orgs."""
    return JSONResponse(await run_as_caller(request, auth.me, read_only=True))


@router.post("/tokens", response_model=NewToken, tags=["accounts"])
async def create_token(request: Request) -> Any:
    """A new token for the caller (another machine, say); shown once."""
    return JSONResponse(await run_as_caller(request, lambda caller: {"token": auth.create_token(caller)}))


@router.delete("/tokens/current", tags=["accounts"])
async def revoke_token(request: Request) -> Any:
    """Revoke the token of this request (log out)."""
    return JSONResponse(await run_as_caller(request, lambda caller: {"revoked": auth.revoke_token(caller)}))


# ----------------------------------------------------------------------------------------------- orgs


@router.post("/orgs", response_model=OrgOut, tags=["orgs"])
async def create_org(body: OrgCreate, request: Request) -> Any:
    """A new org, with the caller as its admin (as far as the server's org policy allows)."""
    policy = request.app.state.org_policy
    return JSONResponse(await run_as_caller(request, lambda caller: auth.create_org(caller, body.name, policy)))


@router.get("/orgs/{org}", response_model=OrgOut, tags=["orgs"])
async def get_org(org: str, request: Request) -> Any:
    """An org and its members (members only)."""
    return await _listing(request, lambda caller: auth.org_info(caller, org))


@router.put("/orgs/{org}/members/{user}", response_model=OrgOut, tags=["orgs"])
async def set_member(org: str, user: str, body: MemberRole, request: Request) -> Any:
    """Add a member or change their role (org admins only)."""
    result = await run_as_caller(request, lambda caller: auth.set_member(caller, org, user, body.role))
    return JSONResponse(result)


@router.delete("/orgs/{org}/members/{user}", response_model=OrgOut, tags=["orgs"])
async def remove_member(org: str, user: str, request: Request) -> Any:
    """Remove a member (org admins only; never the last admin)."""
    return JSONResponse(await run_as_caller(request, lambda caller: auth.remove_member(caller, org, user)))


# -------------------------------------------------------------------------------------------- sharing


@router.get("/shares/{address:address}", response_model=Shares, tags=["sharing"])
async def list_shares(address: str, request: Request) -> Any:
    """The shares in force at an address: on it and on the folders above it."""
    return await _listing(request, lambda caller: service.list_shares(caller, "/" + address))


@router.put("/shares/{address:address}", response_model=Shares, tags=["sharing"])
async def share(address: str, body: ShareRequest, request: Request) -> Any:
    """Share a resource or a folder (and all under it) with users, read or write."""
    result = await run_as_caller(
        request, lambda caller: service.share(caller, "/" + address, body.users, body.access_level)
    )
    return JSONResponse(result)


@router.delete("/shares/{address:address}", response_model=Shares, tags=["sharing"])
async def unshare(
    address: str, request: Request,
    users: Annotated[list[str], Query(min_length=1, max_length=MAX_SHARE_USERS)],
) -> Any:
    """Remove users' shares on exactly this address (``?users=bob&users=carol``)."""
    result = await run_as_caller(request, lambda caller: service.unshare(caller, "/" + address, users))
    return JSONResponse(result)


# ---------------------------------------------------------------------------------- audit and defaults


@router.get("/audit", response_model=AuditLog, tags=["audit"])
async def audit_log(
    request: Request,
    prefix: Annotated[str | None, Query(description="An address; entries on it and under it")] = None,
    user: Annotated[str | None, Query(description="Who acted")] = None,
    action: Annotated[str | None, Query(description=", ".join(service.ACTIONS))] = None,
    since: Annotated[datetime | None, Query(description="Inclusive, ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="Exclusive, ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_AUDIT_LIMIT)] = 100,
    cursor: Annotated[str | None, Query(description="The next_cursor of the previous page", max_length=64)] = None,
) -> Any:
    """Audit entries the caller may see, newest first, a page at a time: a page may hold fewer than ``limit``
    entries (one request looks at a bounded number); ``next_cursor`` continues it, until it is null."""
    await run_in_threadpool(request.app.state.database.audit.flush)  # so reads queued a moment ago are listed too
    return await _listing(
        request, lambda caller: service.audit_log(caller, prefix, user, action, since, until, limit, cursor))


@router.get("/defaults", response_model=Defaults, tags=["defaults"])
async def get_defaults(request: Request) -> Any:
    """The caller's stored config defaults."""
    return JSONResponse(await run_as_caller(request, service.get_defaults, read_only=True))


@router.put("/defaults", response_model=Defaults, tags=["defaults"])
async def put_defaults(body: Defaults, request: Request) -> Any:
    """Replace the caller's config defaults."""
    return JSONResponse(await run_as_caller(request, lambda caller: service.put_defaults(caller, body.defaults)))


# -------------------------------------------------------------------------------------------- secrets


@router.get("/secrets/{owner}", response_model=SecretList, tags=["secrets"])
async def list_secrets(owner: str, request: Request) -> Any:
    """The names and providers of an owner's secrets (a user's own, or an org's for its members); no values."""
    return await _listing(request, lambda caller: secret_store.list_secrets(caller, owner))


@router.get("/secrets/{owner}/{name:address}", response_model=SecretOut, tags=["secrets"])
async def get_secret(owner: str, name: str, request: Request) -> Any:
    """A secret with its values; the read is in the audit log before they are sent."""
    box = request.app.state.secret_box
    result = await run_as_caller(request, lambda caller: secret_store.get_secret(caller, box, owner, name))
    return JSONResponse(result)


@router.put("/secrets/{owner}/{name:address}", response_model=SecretSummary, tags=["secrets"])
async def put_secret(owner: str, name: str, body: SecretPut, request: Request) -> Any:
    """Store or replace a secret; the values are encrypted before they reach the database."""
    box = request.app.state.secret_box
    result = await run_as_caller(
        request, lambda caller: secret_store.put_secret(caller, box, owner, name, body.provider, body.values)
    )
    return JSONResponse(result)


@router.delete("/secrets/{owner}/{name:address}", response_model=SecretSummary, tags=["secrets"])
async def delete_secret(owner: str, name: str, request: Request) -> Any:
    """Delete a secret."""
    return JSONResponse(await run_as_caller(request, lambda caller: secret_store.delete_secret(caller, owner, name)))


# ------------------------------------------------------------------------------------------- clusters


@router.get("/access/{address:address}", response_model=ClusterAccess, tags=["clusters"])
async def cluster_access(address: str, request: Request) -> Any:
    """What the token's user may do on the cluster at ``/address`` (its daemon asks, with that token)."""
    return JSONResponse(await run_as_caller(request, lambda caller: clusters.access_of(caller, "/" + address),
                                            read_only=True))


@router.post("/cluster-keys/{address:address}", response_model=ClusterKeyOut, tags=["clusters"])
async def issue_cluster_key(address: str, request: Request) -> Any:
    """A new heartbeat key for the cluster saved at ``/address`` (its writers); older keys stop working."""
    return JSONResponse(await run_as_caller(request, lambda caller: clusters.issue_key(caller, "/" + address)))


@router.post("/launches/{address:address}", response_model=LaunchOut, tags=["clusters"])
async def record_launch(address: str, body: LaunchIn, request: Request) -> Any:
    """Record that the caller brought the cluster up, from ``origin``."""
    result = await run_as_caller(request, lambda caller: clusters.record_launch(caller, "/" + address, body.origin))
    return JSONResponse(result)


@router.post("/heartbeats/{address:address}", response_model=HeartbeatOut, tags=["clusters"])
async def heartbeat(address: str, body: HeartbeatIn, request: Request) -> Any:
    """The cluster's daemon reports its status and request counts (its heartbeat key, not a user token)."""
    result = await run_as_cluster(request, "/" + address, lambda reporter: clusters.record_heartbeat(
        reporter, body.status, body.calls, body.daemon_calls))
    return JSONResponse(result)


@router.get("/clusters/{address:address}", response_model=ClusterInfo, tags=["clusters"])
async def cluster_info(address: str, request: Request) -> Any:
    """A cluster's launches, last heartbeat and usage per user and hour (its readers)."""
    return await _listing(request, lambda caller: clusters.cluster_info(caller, "/" + address))


# ------------------------------------------------------------------------------------- administrator


@router.post("/admin/users", response_model=AdminNewUser, tags=["admin"])
async def admin_add_user(body: AdminUserCreate, request: Request) -> Any:
    """Create a user; the answer holds their token, shown this once (admin token only)."""
    return JSONResponse(await run_as_admin(request, lambda admin_: admin.add_user(admin_, body.name, body.email)))


@router.post("/admin/users/{user}/tokens", response_model=AdminNewToken, tags=["admin"])
async def admin_issue_token(user: str, request: Request, body: AdminTokenCreate | None = None) -> Any:
    """A new token for a user (by name or email), the older ones kept or revoked (admin token only)."""
    revoke_old = body is not None and body.revoke_old
    result = await run_as_admin(request, lambda admin_: admin.issue_token(admin_, user, revoke_old))
    return JSONResponse(result)


@router.put("/admin/orgs/{org}", response_model=AdminOrgOut, tags=["admin"])
async def admin_add_org(org: str, request: Request, body: AdminOrgUpdate | None = None) -> Any:
    """Create an org if needed, and add members or change their roles (admin token only)."""
    members: dict[str, str] = dict(body.members) if body is not None else {}
    return JSONResponse(await run_as_admin(request, lambda admin_: admin.add_org(admin_, org, members)))
