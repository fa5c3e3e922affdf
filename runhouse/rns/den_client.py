"""The client of Den, the shared metadata service: resources by ``/owner/...`` address, sharing, defaults.

A thin httpx client over Den's JSON API (see :mod:`runhouse.den.app`); errors come back as the same typed
errors Den raises. Den's URL and the user's token come from ``rh.configs`` (``rh.login`` sets them).
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

from runhouse import protocol
from runhouse.errors import AuthenticationError, ConfigError, DenUnreachableError

DEN_TIMEOUT_S = 30.0


class DenClient:
    """Calls one Den as one user."""

    def __init__(self, url: str, token: str | None, timeout: float = DEN_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
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

    # --- secrets (values are sent and received only here, over the token-authenticated API) -----------
    def put_secret(self, owner: str, name: str, provider: str, values: dict[str, Any]) -> dict[str, Any]:
        return self._request("PUT", f"/v1/secrets/{owner}/{name}", json={"provider": provider, "values": values})

    def get_secret(self, owner: str, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/secrets/{owner}/{name}")

    def list_secrets(self, owner: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/v1/secrets/{owner}")["secrets"])

    def delete_secret(self, owner: str, name: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/secrets/{owner}/{name}")


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


def check_token(url: str, token: str) -> dict[str, Any]:
    """Who ``token`` belongs to at Den ``url``; raises AuthenticationError for a wrong token."""
    client = DenClient(url, token)
    try:
        return client.me()
    except AuthenticationError:
        raise AuthenticationError(f"Den at {url} does not know this token") from None
    finally:
        client.close()


def login(
    token: str | None = None,
    den_url: str | None = None,
    interactive: bool = False,
    upload_defaults: bool = False,
    download_defaults: bool = False,
    upload_secrets: bool = False,
    download_secrets: bool = False,
) -> str:
    """Log in to Den: check the token, save it with Den's URL and the user name in ``~/.rh/config.yaml``.

    Afterwards bare names save to the user's Den folder (``@/...``); ``~/...`` still saves locally.
    ``interactive`` asks for what is missing and offers to upload or download config defaults and secrets
    (upload: the credentials found on this machine; download: stored ones, never replacing local files).

    Returns:
        The user name.
    """
    import getpass

    from runhouse.config import configs
    from runhouse.prompts import ask_yes_no

    url = den_url or configs.get("den_url")
    if not url and interactive:
        url = input("Den URL (e.g. http://den.example.com:32400): ").strip()
    if not url:
        raise ConfigError("rh.login needs den_url= (the address of your Den)")
    if not token and interactive:
        token = getpass.getpass("Den token: ").strip()
    if not token:
        raise ConfigError("rh.login needs token= (runhouse den user add NAME prints one)")
    user = check_token(url, token)["name"]
    configs.set("den_url", url)
    configs.set("token", token)
    configs.set("username", user)
    if interactive:
        upload_defaults = upload_defaults or ask_yes_no("Upload your local config defaults to Den? [y/N] ")
        download_defaults = download_defaults or ask_yes_no("Download your config defaults from Den? [y/N] ")
    if interactive:
        from runhouse.resources.secret import Secrets

        found = Secrets.configured_providers()
        if found:
            upload_secrets = upload_secrets or ask_yes_no(
                f"Upload the credentials found here ({', '.join(found)}) to Den, encrypted? [y/N] ")
        download_secrets = download_secrets or ask_yes_no("Download your secrets from Den into this machine? [y/N] ")
    if download_defaults:
        configs.download_defaults()
    if upload_defaults:
        configs.upload_defaults()
    _sync_secrets(upload_secrets, download_secrets)
    return user


def _sync_secrets(upload: bool, download: bool) -> None:
    if not (upload or download):
        return
    from runhouse.resources.secret import Secrets

    if upload:
        Secrets.extract_and_upload()
    if download:
        Secrets.download_into_env()


def logout(interactive: bool = False, remove_secrets: bool = False) -> list[str]:
    """Forget the Den token and user name (Den's URL is kept for the next login).

    ``remove_secrets`` (or a yes at the ``interactive`` prompt) also deletes the providers' credential files
    from this machine. Returns the files removed.
    """
    from runhouse.config import configs
    from runhouse.prompts import ask_yes_no
    from runhouse.resources.secret import Secrets

    configs.set("token", None)
    configs.set("username", None)
    found = Secrets.configured_providers()
    if interactive and found and not remove_secrets:
        remove_secrets = ask_yes_no(f"Also delete the local credential files of {', '.join(found)}? [y/N] ")
    return Secrets.remove_local() if remove_secrets else []

