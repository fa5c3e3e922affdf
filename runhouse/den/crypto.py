"""Den's server key for secrets at rest: Fernet (AES-128-CBC with HMAC-SHA256) from ``cryptography``.

The key comes from the environment variable :data:`KEY_ENV` (a Fernet key, for deployments that keep keys
in a secret manager), else from a key file (default ``<config dir>/den/secret.key``) that Den creates with
mode 0600 on its first start. Without the key the stored values cannot be read: back it up with the database.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from runhouse.den.files import den_folder, ensure_private_file
from runhouse.errors import ConfigError

KEY_ENV = "RH_DEN_SECRET_KEY"


def default_key_file() -> Path:
    """Where Den keeps its secret key unless told otherwise: ``<config dir>/den/secret.key``."""
    return den_folder() / "secret.key"


class SecretBox:
    """Seals JSON objects into Fernet tokens and opens them again.

    Example::

        box = SecretBox.load()
        token = box.seal({"api_key": "..."})
        box.open(token)
    """

    def __init__(self, key: bytes | str) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise ConfigError(
                "Den's secret key is not a Fernet key (32 url-safe base64-encoded bytes); "
                "make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())'"
            ) from None

    def __repr__(self) -> str:
        return "<SecretBox>"

    @classmethod
    def load(cls, key_file: Path | None = None) -> SecretBox:
        """The key from :data:`KEY_ENV`, else from ``key_file`` (created with mode 0600 when missing).

        Raises:
            ConfigError: the key is malformed, or its file can be read by other users.
        """
        if os.environ.get(KEY_ENV):
            return cls(os.environ[KEY_ENV].strip())
        return cls(ensure_private_file(key_file or default_key_file(), "Den's secret key",
                                       lambda: Fernet.generate_key().decode()))

    def seal(self, values: dict[str, Any]) -> str:
        """``values`` as an encrypted, authenticated token."""
        return self._fernet.encrypt(json.dumps(values, separators=(",", ":")).encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        """The values sealed in ``token``.

        Raises:
            ConfigError: the token was sealed with another key, or altered.
        """
        try:
            values: dict[str, Any] = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise ConfigError("a stored secret cannot be decrypted with Den's key: was the key changed?") from None
        return values
