"""Den: the shared metadata service (users, orgs, resources with versions, sharing, audit, defaults, secrets).

Modules, each with one concern:

- :mod:`runhouse.den.db`       SQLAlchemy models, engine set-up and ordered schema migrations
- :mod:`runhouse.den.auth`     tokens (only their SHA-256 is stored), users, orgs and membership, the admin token
- :mod:`runhouse.den.admin`    what the administrator does (users, their tokens, orgs), audited
- :mod:`runhouse.den.service`  the library the HTTP routes call: resources, ACL checks, sharing, audit, defaults
- :mod:`runhouse.den.secret_store`  secrets per user or org, sealed by :mod:`runhouse.den.crypto` (the server key)
- :mod:`runhouse.den.access`   the one access check: authenticate the bearer token, run an action in one
                                transaction (every router uses it: the API, and a web UI beside it), as a
                                user or as the administrator
- :mod:`runhouse.den.files`    Den's files on this machine: keys, admin token, the records of running Dens
- :mod:`runhouse.den.api`      the JSON API: ``schemas`` (request and response models), ``routes`` (``/v1``)
- :mod:`runhouse.den.app`      the app factory: includes the routers, typed JSON errors, body limit, ``serve()``
- :mod:`runhouse.den.cli`      ``runhouse den serve [--detach] | stop | user add | user token | org add``

Den's own errors (``PermissionDeniedError``, ``ConflictError``, ``PayloadTooLargeError``) live in
:mod:`runhouse.errors` with the rest of the hierarchy and are re-exported here.
"""

from __future__ import annotations

from runhouse.errors import ConflictError, PayloadTooLargeError, PermissionDeniedError

DEFAULT_PORT = 32400
"""Port of ``runhouse den serve`` unless ``--port`` says otherwise."""
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_ORGS_PER_USER = 10
"""How many orgs one user may create through the API unless ``--max-orgs-per-user`` says otherwise."""


__all__ = ["DEFAULT_HOST", "DEFAULT_MAX_ORGS_PER_USER", "DEFAULT_PORT", "ConflictError", "PayloadTooLargeError",
           "PermissionDeniedError"]
