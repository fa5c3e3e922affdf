"""The web UI's pages, under ``/ui``: each handler reads its input, calls the library through
:func:`~runhouse.den.ui.web.show` or :func:`~runhouse.den.ui.web.change` (the one access check), and renders
a template.

Addresses go last in a path (``/ui/resources/alice/proj/fn`` shows ``/alice/proj/fn``).
"""

from __future__ import annotations

import difflib
import hmac
import json
from importlib import resources as package_files
from typing import Any, cast

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import Response

from runhouse.den import auth, clusters, secret_store, service
from runhouse.den.api import routes as _api_routes  # noqa: F401  (registers the "address" path convertor)
from runhouse.den.auth import Caller
from runhouse.den.ui import queries
from runhouse.den.ui.web import (
    PREFIX,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    Visit,
    as_token,
    change,
    error_page,
    field,
    href,
    new_signin_token,
    number,
    page,
    read_form,
    safe_next,
    see,
    set_cookie,
    show,
    user_page,
    visit_of,
)
from runhouse.errors import AuthenticationError, BadRequestError, ObjectNotFoundError

router = APIRouter(prefix=PREFIX, include_in_schema=False)
"""The web UI; :func:`runhouse.den.app.create_app` includes it beside the JSON API."""

AUDIT_PAGE = 50
SIGNIN_COOKIE_AGE_S = 3600
DIFF_CONTEXT_LINES = 3
_STYLE = package_files.files("runhouse.den.ui").joinpath("static/style.css").read_bytes()


def _address(path: str) -> str:
    return "/" + path


def _config_text(config: Any) -> str:
    return json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False)


def _diff(old: Any, new: Any) -> list[tuple[str, str]]:
    """The lines of a unified diff of two configs as ``(kind, text)``: kind ``add``, ``del``, ``hunk`` or ``same``."""
    lines = difflib.unified_diff(_config_text(old).splitlines(), _config_text(new).splitlines(), lineterm="",
                                 n=DIFF_CONTEXT_LINES)
    kinds = {"+": "add", "-": "del", "@": "hunk"}
    return [(kinds.get(line[:1], "same"), line) for line in list(lines)[2:]]


# ------------------------------------------------------------------------------- sign in and out


@router.get("")
async def home() -> Response:
    return see(f"{PREFIX}/folders")


@router.get("/static/style.css")
async def style() -> Response:
    return Response(_STYLE, media_type="text/css", headers={**SECURITY_HEADERS, "Cache-Control": "max-age=3600"})


def _signin_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    token = new_signin_token()
    response = page("signin.html", status, signin_csrf=token, error=error,
                    next=safe_next(request.query_params.get("next")))
    set_cookie(request, response, SIGNIN_COOKIE, token, SIGNIN_COOKIE_AGE_S)
    return response


@router.get("/signin")
async def signin_form(request: Request) -> Response:
    return _signin_page(request)


@router.post("/signin")
async def signin(request: Request) -> Response:
    """Exchange a Den token for a session: the token is checked by the access check, like any request's."""
    form = await read_form(request)
    if isinstance(form, Exception):
        return _signin_page(request, str(form), 400)
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or not hmac.compare_digest(str(form.get("csrf", "")), expected):
        return _signin_page(request, "This sign-in form expired or came from another site; sign in again.", 403)
    token = str(form.get("token", "")).strip()
    if not token:
        return _signin_page(request, "Paste a Den token (from `runhouse den user add` or the Tokens page).", 400)
    box = request.app.state.secret_box
    try:
        session_id = await as_token(request, token, lambda caller: queries.create_session(caller, box, token),
                                    read_only=False)
    except (AuthenticationError, BadRequestError) as exc:
        return _signin_page(request, str(exc), 401)
    response = see(safe_next(str(form.get("next", ""))))
    set_cookie(request, response, SESSION_COOKIE, session_id,
               int(queries.SESSION_LIFETIME.total_seconds()))
    response.delete_cookie(SIGNIN_COOKIE, path=PREFIX)
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    def act(caller: Caller, visit: Visit, _form: FormData) -> Response:
        queries.end_session(caller, visit.session_id)
        response = see(f"{PREFIX}/signin")
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    return await change(request, act)


# ---------------------------------------------------------------------------------------- folders


@router.get("/folders")
async def roots(request: Request) -> Response:
    """Where the user's tree starts, or what a search by name found."""
    text = request.query_params.get("q")
    if text is not None and text.strip():
        return await show(request, lambda caller, visit: user_page(
            "folders.html", caller, visit, section="folders", q=text, results=queries.search(caller, text)),
            grows=True)
    return await show(request, lambda caller, visit: user_page(
        "folders.html", caller, visit, section="folders", q="", roots=queries.roots(caller)))


@router.get("/folders/{path:address}")
async def folder(path: str, request: Request) -> Response:
    """A folder's entries the user can read."""
    def render(caller: Caller, visit: Visit) -> Response:
        listing = service.list_folder(caller, _address(path))
        owner = listing["folder"].split("/")[1]
        # Write access to the folder is write access to all in it; otherwise each entry has its own.
        whole = queries.access_label(caller, listing["folder"], False) == "write"
        for entry in listing["entries"]:
            entry["owner"] = owner
            # Shown without access of its own: a public resource, or a folder with something readable inside.
            entry["access"] = "write" if whole else queries.access_label(
                caller, entry["address"], entry["kind"] == "resource") or "partial"
        return user_page("folder.html", caller, visit, section="folders", folder=listing["folder"],
                         entries=listing["entries"])

    return await show(request, render, grows=True)


# -------------------------------------------------------------------------------------- resources


@router.get("/resources/{path:address}")
async def resource(path: str, request: Request) -> Response:
    """A resource: its config (current, or ``?version=``), every version, who it is shared with."""
    address = _address(path)

    def render(caller: Caller, visit: Visit) -> Response:
        shown = service.get_resource(caller, address, number(request.query_params.get("version"), "version"))
        history = service.list_versions(caller, address)
        level = queries.access_label(caller, address, shown["public"])
        shares = service.list_shares(caller, address)["shares"] if level in ("read", "write") else None
        return user_page("resource.html", caller, visit, section="folders", resource=shown, access=level,
                         config=_config_text(shown["config"]), versions=list(reversed(history["versions"])),
                         shares=shares, orgs=sorted(caller.orgs))

    return await show(request, render, grows=True)


@router.get("/diff/{path:address}")
async def diff(path: str, request: Request) -> Response:
    """The difference between two versions of a resource (``?a=`` and ``?b=``; the last two by default)."""
    address = _address(path)

    def render(caller: Caller, visit: Visit) -> Response:
        newer = number(request.query_params.get("b"), "version b")
        new = service.get_resource(caller, address, newer)
        older = number(request.query_params.get("a"), "version a") or max(new["version"] - 1, 1)
        old = service.get_resource(caller, address, older)
        versions = list(range(new["current_version"], 0, -1))
        return user_page("diff.html", caller, visit, section="folders", address=address, a=older, b=new["version"],
                         versions=versions, lines=_diff(old["config"], new["config"]))

    return await show(request, render, grows=True)


@router.post("/rollback/{path:address}")
async def rollback(path: str, request: Request) -> Response:
    address = _address(path)

    def act(caller: Caller, _visit: Visit, form: FormData) -> Response:
        service.rollback(caller, address, number(field(form, "version"), "version") or 0)
        return see(f"{PREFIX}/resources{href(address)}")

    return await change(request, act)


@router.post("/share/{path:address}")
async def share(path: str, request: Request) -> Response:
    """Share with a user, or with every member of one of the user's orgs."""
    address = _address(path)

    def act(caller: Caller, _visit: Visit, form: FormData) -> Response:
        who, kind, level = field(form, "who"), field(form, "kind"), field(form, "access_level")
        if kind == "org":
            members = cast("list[dict[str, str]]", auth.org_info(caller, who)["members"])
            users = [member["user"] for member in members if member["user"] != caller.name]
            if not users:
                raise BadRequestError(f"org {who!r} has no members but you to share with")
        elif kind == "user":
            users = [who]
        else:
            raise BadRequestError(f"share with a user or an org, not {kind[:50]!r}")
        service.share(caller, address, users, level)
        return see(f"{PREFIX}/resources{href(address)}")

    return await change(request, act)


@router.post("/unshare/{path:address}")
async def unshare(path: str, request: Request) -> Response:
    address = _address(path)

    def act(caller: Caller, _visit: Visit, form: FormData) -> Response:
        service.unshare(caller, field(form, "share_address"), [field(form, "user")])
        return see(f"{PREFIX}/resources{href(address)}")

    return await change(request, act)


# ---------------------------------------------------------------------------------------- secrets


@router.get("/secrets")
async def secrets_page(request: Request) -> Response:
    """The names of the secrets of the user and their orgs: never a value."""
    def render(caller: Caller, visit: Visit) -> Response:
        rows = [row for owner in [caller.name, *sorted(caller.orgs)]
                for row in secret_store.list_secrets(caller, owner)["secrets"]]
        return user_page("secrets.html", caller, visit, section="secrets", secrets=rows)

    return await show(request, render)


# --------------------------------------------------------------------------------------- clusters


@router.get("/clusters")
async def clusters_page(request: Request) -> Response:
    return await show(request, lambda caller, visit: user_page(
        "clusters.html", caller, visit, section="clusters", clusters=queries.readable_clusters(caller)), grows=True)


@router.get("/clusters/{path:address}")
async def cluster(path: str, request: Request) -> Response:
    """A cluster's last heartbeat, launches and usage."""
    def render(caller: Caller, visit: Visit) -> Response:
        info = clusters.cluster_info(caller, _address(path))
        queries.require_cluster(caller, info["address"])
        beat = info["heartbeat"]
        return user_page("cluster.html", caller, visit, section="clusters", info=info,
                         fields=queries.status_summary(beat["status"] if beat else None),
                         status_json=_config_text(beat["status"]) if beat else None)

    return await show(request, render, grows=True)


# ------------------------------------------------------------------------------ orgs and tokens


@router.get("/orgs")
async def orgs(request: Request) -> Response:
    """The user's orgs with their members."""
    def render(caller: Caller, visit: Visit) -> Response:
        listing = [{**auth.org_info(caller, name), "role": role} for name, role in sorted(caller.orgs.items())]
        return user_page("orgs.html", caller, visit, section="orgs", orgs=listing)

    return await show(request, render)


@router.post("/orgs")
async def create_org(request: Request) -> Response:
    policy = request.app.state.org_policy

    def act(caller: Caller, _visit: Visit, form: FormData) -> Response:
        auth.create_org(caller, field(form, "name"), policy)
        return see(f"{PREFIX}/orgs")

    return await change(request, act)


@router.post("/orgs/{org}/members")
async def add_member(org: str, request: Request) -> Response:
    def act(caller: Caller, _visit: Visit, form: FormData) -> Response:
        auth.set_member(caller, org, field(form, "user"), field(form, "role"))
        return see(f"{PREFIX}/orgs")

    return await change(request, act)


@router.post("/orgs/{org}/members/remove")
async def remove_member(org: str, request: Request) -> Response:
    def act(caller: Caller, _visit: Visit, form: FormData) -> Response:
        auth.remove_member(caller, org, field(form, "user"))
        return see(f"{PREFIX}/orgs")

    return await change(request, act)


@router.get("/tokens")
async def tokens(request: Request) -> Response:
    """The user's tokens (when made, which one this session uses), to revoke or add to."""
    return await show(request, lambda caller, visit: user_page(
        "tokens.html", caller, visit, section="tokens", tokens=queries.list_tokens(caller), new_token=None))


@router.post("/tokens")
async def create_token(request: Request) -> Response:
    """A new token, shown on this answer only (never stored, never shown again)."""
    def act(caller: Caller, visit: Visit, _form: FormData) -> Response:
        token = auth.create_token(caller)
        caller.session.flush()
        return user_page("tokens.html", caller, visit, section="tokens", tokens=queries.list_tokens(caller),
                         new_token=token)

    return await change(request, act)


@router.post("/tokens/revoke")
async def revoke_token(request: Request) -> Response:
    def act(caller: Caller, _visit: Visit, form: FormData) -> Response:
        queries.revoke_token(caller, number(field(form, "id"), "token id") or 0)
        return see(f"{PREFIX}/tokens")

    return await change(request, act)


# ------------------------------------------------------------------------------------------ audit


@router.get("/audit")
async def audit(request: Request) -> Response:
    """The audit log the user may see, newest first, filtered by user, resource (and all below) and action."""
    params = request.query_params
    filters = {name: (params.get(name) or "").strip() for name in ("user", "resource", "action")}
    visit = await visit_of(request)
    if visit is not None:  # reads queued a moment ago are listed too
        await run_in_threadpool(request.app.state.database.audit.flush)

    def render(caller: Caller, visit: Visit) -> Response:
        log = service.audit_log(caller, prefix=filters["resource"] or None, user=filters["user"] or None,
                                action=filters["action"] or None, limit=AUDIT_PAGE,
                                cursor=params.get("cursor") or None)
        cursor = log["next_cursor"]
        older = {**{k: v for k, v in filters.items() if v}, "cursor": cursor} if cursor else None
        return user_page("audit.html", caller, visit, section="audit", entries=log["entries"], filters=filters,
                         actions=service.ACTIONS, older=older, paged=bool(params.get("cursor")))

    return await show(request, render, grows=True)


# ------------------------------------------------------------------------------------ no such page


@router.api_route("/{path:address}", methods=["GET", "POST"])
async def missing(path: str, request: Request) -> Response:
    visit = await visit_of(request)
    return error_page(ObjectNotFoundError(f"there is no page {PREFIX}/{path[:200]}"), visit, 404)
