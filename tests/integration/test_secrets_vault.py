"""The Vault secrets backend (KV version 2), run only where a Vault server is reachable: set VAULT_ADDR and
VAULT_TOKEN (for example ``vault server -dev``). No Vault server is packaged for Debian, so CI skips this."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import pytest

import runhouse as rh
from runhouse.config import configs
from runhouse.errors import ObjectNotFoundError


def _vault() -> tuple[str, str]:
    url, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if not url or not token:
        pytest.skip("no Vault server: set VAULT_ADDR and VAULT_TOKEN to run these")
    try:
        httpx.get(f"{url}/v1/sys/health", timeout=5)
    except httpx.TransportError as exc:
        pytest.skip(f"Vault at {url} does not answer: {exc}")
    return url, token


def test_secrets_round_trip_through_vault(config_dir: Path) -> None:
    url, _ = _vault()
    name = f"test-{uuid.uuid4().hex[:8]}"
    configs.set("secrets_backend", "vault")
    configs.set("vault_url", url)
    try:
        rh.Secrets.put("aws", secret={"access_key": "A", "secret_key": "B"}, name=name)
        assert rh.Secrets.get(name) == {"access_key": "A", "secret_key": "B"}
        assert rh.Secrets.names()[name] == "aws"
        rh.Secrets.delete(name)
        with pytest.raises(ObjectNotFoundError):
            rh.Secrets.get(name)
    finally:
        configs.set("secrets_backend", "den")
        configs.set("vault_url", None)
