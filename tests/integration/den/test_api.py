"""The API describes itself (OpenAPI), answers health checks, and keeps its schema version."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert

from runhouse.den.db import SCHEMA_VERSION, Database, SchemaVersion, normalize_url
from runhouse.errors import ConfigError
from tests.integration.den.conftest import DenServer


def test_openapi_schema_describes_every_route_and_the_bearer_token(den: DenServer) -> None:
    schema = den.client().get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [
        ("/v1/resources/{address}", "put"), ("/v1/resources/{address}", "get"),
        ("/v1/resources/{address}", "patch"), ("/v1/resources/{address}", "delete"),
        ("/v1/history/{address}", "get"), ("/v1/rollback/{address}", "post"), ("/v1/folders/{address}", "get"),
        ("/v1/shares/{address}", "put"), ("/v1/shares/{address}", "delete"), ("/v1/audit", "get"),
        ("/v1/defaults", "put"), ("/v1/me", "get"), ("/health", "get"),
    ]:
        assert method in paths[path], (path, method)
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    put = paths["/v1/resources/{address}"]["put"]
    assert put["responses"]["403"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "ErrorBody" in schema["components"]["schemas"]


def test_docs_and_health_need_no_token(den: DenServer) -> None:
    anonymous = den.client()
    assert anonymous.get("/docs").status_code == 200
    health = anonymous.get("/health").json()
    assert health["status"] == "ok" and health["schema_version"] == SCHEMA_VERSION


def test_migrating_again_changes_nothing(den: DenServer) -> None:
    assert den.database.migrate() == SCHEMA_VERSION
    assert den.count("schema_version") == SCHEMA_VERSION


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    with Database(f"sqlite:///{tmp_path / 'den.sqlite'}") as database:
        database.migrate()
        with database.transaction() as session:
            session.execute(insert(SchemaVersion).values(version=SCHEMA_VERSION + 1, description="future"))
        with pytest.raises(ConfigError, match="upgrade runhouse"):
            database.migrate()


def test_database_urls_pick_psycopg_and_take_plain_paths(tmp_path: Path) -> None:
    assert normalize_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalize_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert normalize_url(str(tmp_path / "d.sqlite")) == f"sqlite:///{tmp_path / 'd.sqlite'}"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
