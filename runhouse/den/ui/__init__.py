"""Den's web UI: server-rendered pages under ``/ui`` for folders, resources (versions, diffs, rollback,
sharing), secrets (names only), clusters, orgs, tokens and the audit log.

Every page goes through the same access check as the JSON API (:func:`runhouse.den.access.run_as_caller`);
see :mod:`runhouse.den.ui.web` for sessions, CSRF and the security headers.
"""

from __future__ import annotations

from runhouse.den.ui.pages import router

__all__ = ["router"]
