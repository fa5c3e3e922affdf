"""Den's JSON API under ``/v1``: request and response models, and the router of thin routes.

- :mod:`runhouse.den.api.schemas`  pydantic models of the bodies (documented at ``/docs``)
- :mod:`runhouse.den.api.routes`   the ``/v1`` router; each route runs one library call through
  :func:`runhouse.den.access.run_as_caller`, the access check that a web UI router shares

:func:`runhouse.den.app.create_app` includes :data:`router` beside any other router (a UI under
``runhouse/den/ui/``), and owns what they all share: error answers, the body-size limit and ``/health``.
"""

from __future__ import annotations

from runhouse.den.api.routes import router

__all__ = ["router"]
