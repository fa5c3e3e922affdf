"""Den: the shared metadata service (users, orgs, resources with versions, sharing, audit, defaults, secrets).

Modules, each with one concern:

- :mod:`runhouse.den.db`       SQLAlchemy models, engine set-up and ordered schema migrations
- :mod:`runhouse.den.auth`     tokens (only their SHA-256 is stored), users, orgs and membership
- :mod:`runhouse.den.service`  the library the HTTP routes call: resources, ACL checks, sharing, audit, defaults
- :mod:`runhouse.den.secret_store`  secrets per user or org, sealed by :mod:`runhouse.den.crypto` (the server key)
- :mod:`runhouse.den.app`      the FastAPI app: thin routes, typed JSON errors, ``serve()``
- :mod:`runhouse.den.cli`      ``runhouse den serve | user add | org add``

Den's own errors (``PermissionDeniedError``, ``ConflictError``, ``PayloadTooLargeError``) live in
:mod:`runhouse.errors` with the rest of the hierarchy and are re-exported here.
"""

from __future__ import annotations

from runhouse.errors import ConflictError, PayloadTooLargeError, PermissionDeniedError

DEFAULT_PORT = 32400
"""Port of ``runhouse den serve`` unless ``--port`` says otherwise."""
DEFAULT_HOST = "127.0.0.1"


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ConflictError", "PayloadTooLargeError", "PermissionDeniedError"]
