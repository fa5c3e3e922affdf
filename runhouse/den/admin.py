"""What Den's administrator does: add users, issue them new tokens, create orgs and set their members.

Each function takes the :class:`~runhouse.den.auth.Admin` of one request (authenticated by
:func:`runhouse.den.access.run_as_admin`) or of one direct change of a database (``runhouse den user add
--db URL``), writes an audit entry by ``(admin)`` on the user's or org's folder, and returns plain JSON-able
data. Tokens are in the answers once and nowhere else: never logged, never audited.
"""

from __future__ import annotations

from typing import Any

from runhouse.den import auth
from runhouse.den.auth import Admin
from runhouse.den.service import audit


def add_user(admin: Admin, name: str, email: str | None = None) -> dict[str, Any]:
    """Create user ``name``; the answer holds their first token."""
    token = auth.add_user(admin.session, name, email)
    audit(admin, "user_add", f"/{name}", email=email)
    return {"name": name, "email": email, "token": token}


def issue_token(admin: Admin, who: str, revoke_old: bool = False) -> dict[str, Any]:
    """A new token for the user named ``who`` (or with that email); with ``revoke_old`` every older token
    of theirs stops working (a lost or leaked one), else they keep working (another machine)."""
    user, token, revoked = auth.issue_user_token(admin.session, who, revoke_old, admin.token_cache)
    audit(admin, "user_token", f"/{user.name}", revoked=revoked)
    return {"name": user.name, "token": token, "revoked": revoked}


def add_org(admin: Admin, name: str, members: dict[str, str]) -> dict[str, Any]:
    """Create org ``name`` if it does not exist, and add ``members`` (user name or email to role, ``admin``
    or ``member``) or change their roles; the answer lists every member and whether the org is new."""
    created = auth.add_org(admin.session, name, members)
    audit(admin, "org_add", f"/{name}", created=created, members=members)
    return {"name": name, "created": created, "members": auth.org_members(admin.session, name)}
