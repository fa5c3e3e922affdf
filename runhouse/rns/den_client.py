"""The client of Den, the shared metadata service: resources by ``/owner/...`` address, sharing, defaults.

A thin httpx client over Den's JSON API (see :mod:`runhouse.den.api.routes`); errors come back as the same
typed errors Den raises (the envelope is :mod:`runhouse.protocol`'s). Den's URL and the user's token come
from ``rh.configs`` (:func:`runhouse.account.login` sets them).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any
from urllib.parse import quote

import httpx

from runhouse import protocol
from runhouse.errors import AuthenticationError, ConfigError, DenUnreachableError
from runhouse.lifetime import Closeable
from runhouse.rns.names import validate_owner

DEN_TIMEOUT_S = 30.0


class DenClient(Closeable):
    """Calls one Den as one user; a context manager that closes its connections on leaving.

    Example::

        with DenClient("http://localhost:32400", token) as den:
            den.me()
    """

    def __init__(self, url: str, token: str | None, timeout: float = DEN_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connections to Den."""
        self._http.close()


    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise DenUnreachableError(f"Den at {self.url} does not answer ({type(exc).__name__}: {exc})") from exc
        if response.status_code < 400:
            return response.json()
        raise protocol.error_from_envelope(response.status_code, response.content, f"Den at {self.url}")

    # --- accounts and defaults -----------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        """The logged-in user: name, email, orgs."""
        return self._request("GET", "/v1/me")

    def get_defaults(self) -> dict[str, Any]:
        return self._request("GET", "/v1/defaults")["defaults"]

    def put_defaults(self, defaults: dict[str, Any]) -> dict[str, Any]:
        return self._request("PUT", "/v1/defaults", json={"defaults": defaults})["defaults"]

    # --- resources -----------------------------------------------------------------------------------
    def put(self, address: str, config: dict[str, Any]) -> dict[str, Any]:
        return self._request("PUT", f"/v1/resources{address}", json={"config": config})

    def get(self, address: str, version: int | None = None) -> dict[str, Any]:
        params = {"version": version} if version is not None else None
        return self._request("GET", f"/v1/resources{address}", params=params)

    def delete(self, address: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/resources{address}")

    def history(self, address: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/history{address}")

    def folder(self, address: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/folders{address}")

    def share(self, address: str, users: list[str], access_level: str) -> dict[str, Any]:
        return self._request("PUT", f"/v1/shares{address}", json={"users": users, "access_level": access_level})

    def unshare(self, address: str, users: list[str]) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/shares{address}", params={"users": users})

    # --- clusters -------------------------------------------------------------------------------------
    def cluster_key(self, address: str) -> str:
        """A new heartbeat key for the cluster saved at ``address`` (for its daemon; older keys stop working)."""
        return str(self._request("POST", f"/v1/cluster-keys{address}")["key"])

    def record_launch(self, address: str, origin: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/launches{address}", json={"origin": origin})

    def cluster(self, address: str) -> dict[str, Any]:
        """The cluster's launches, last heartbeat and usage per user and hour."""
        return self._request("GET", f"/v1/clusters{address}")

    # --- secrets (values are sent and received only here, over the token-authenticated API) -----------
    # Owner and name are single path segments, escaped whole: a name holding / ? # or % reaches Den as
    # written (which refuses it), never as another secret's path, a query or a fragment.
    def put_secret(self, owner: str, name: str, provider: str, values: dict[str, Any]) -> dict[str, Any]:
        return self._request("PUT", _secret_path(owner, name), json={"provider": provider, "values": values})

    def get_secret(self, owner: str, name: str) -> dict[str, Any]:
        return self._request("GET", _secret_path(owner, name))

    def list_secrets(self, owner: str) -> list[dict[str, Any]]:
        return list(self._request("GET", _secret_path(owner))["secrets"])

    def delete_secret(self, owner: str, name: str) -> dict[str, Any]:
        return self._request("DELETE", _secret_path(owner, name))


def _secret_path(owner: str, name: str | None = None) -> str:
    """``/v1/secrets/<owner>[/<name>]`` with each part percent-escaped, ``/`` included."""
    validate_owner(owner)
    return "/v1/secrets/" + "/".join(quote(part, safe="") for part in (owner, name) if part is not None)


_shared: DenClient | None = None
_shared_key: tuple[str, str] | None = None
_shared_lock = threading.Lock()


def den_client() -> DenClient:
    """The client for the Den and user in ``rh.configs``: one per process, kept while they stay the same,
    so its connections are reused (httpx clients are thread-safe).

    Raises:
        ConfigError: not logged in (no Den URL or token); ``rh.login`` first.
    """
    global _shared, _shared_key
    from runhouse.config import configs

    url, token = configs.get("den_url"), configs.get("token")
    if not url or not token:
        raise ConfigError("Den addresses (@/..., /owner/...) need a Den: log in first with rh.login(...)")
    with _shared_lock:
        if _shared is None or _shared_key != (url, token):
            if _shared is not None:
                _shared.close()
            _shared, _shared_key = DenClient(url, token), (url, token)
        return _shared


# Whose tokens given by RH_TOKEN are, asked of Den once and kept (by a hash of Den's URL and the token).
_USERS_FILE = "den_users.json"
_known_users: dict[str, str] = {}


def current_user() -> str | None:
    """The Den user that ``@`` and bare names belong to, or None when not logged in.

    The settings file's ``username``, unless ``RH_TOKEN`` holds another token than the file's: then the user
    that token belongs to, asked of Den once and cached (``den_users.json`` in the runhouse folder, mode 0600,
    keyed by a hash, never the token), so ``RH_TOKEN`` alone is a login and wins over another user's file.
    """
    from runhouse.config import configs

    settings = configs.load()
    env_token = os.environ.get("RH_TOKEN")
    if not env_token or env_token == settings.token:
        return settings.username if settings.token else None
    url = configs.get("den_url")
    return user_of_token(url, env_token) if url else None


def user_of_token(url: str, token: str) -> str:
    """The name of the user ``token`` belongs to at Den ``url``, from the cache or else from Den (then cached).

    Raises:
        AuthenticationError: Den does not know the token.
        DenUnreachableError: it had to ask Den, and Den does not answer.
    """
    from runhouse.paths import config_dir, write_atomic

    key = hashlib.sha256(f"{url.rstrip('/')}\0{token}".encode()).hexdigest()
    if key in _known_users:
        return _known_users[key]
    path = config_dir() / _USERS_FILE
    try:
        cached = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    name = cached.get(key)
    if not isinstance(name, str):
        name = str(check_token(url, token)["name"])
        cached[key] = name
        write_atomic(path, json.dumps(cached))
    _known_users[key] = name
    return name


def check_token(url: str, token: str) -> dict[str, Any]:
    """Who ``token`` belongs to at Den ``url``; raises AuthenticationError for a wrong token."""
    with DenClient(url, token) as client:
        try:
            return client.me()
        except AuthenticationError:
            raise AuthenticationError(f"Den at {url} does not know this token") from None
