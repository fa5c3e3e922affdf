"""Den auth on the daemon: accepting the Den tokens of users who may use the cluster in Den, and reporting usage.

A daemon with Den auth (``rh.cluster(..., den_auth=True)``, ``cluster.enable_den_auth()``) knows Den's URL, the
cluster's Den address and the cluster's heartbeat key (:class:`DenAuthSettings`, kept 0600 in its folder so a
restart keeps them). It still compares its own token first; any other bearer token is checked by asking Den
``GET /v1/access<address>`` **with that token** (so the daemon holds no user credential), and the answer
(who, and ``read``/``write``/nothing) is cached for :data:`ACCESS_TTL_S` (refusals for
:data:`REFUSAL_TTL_S`), in a bounded cache keyed by the token's hash. Read access lets a user call what is
deployed; write access everything else (:func:`runhouse.server.app` maps each route to the level it needs).

Den down never opens the daemon: a token not in the cache (or whose entry expired) is refused with
:class:`~runhouse.errors.DenUnreachableError` (503) saying Den could not be asked; the daemon's own token keeps
working. Tokens that cannot be Den tokens (too long, not printable ASCII) are refused without asking.

Usage: every accepted request is counted per caller; a background task sends Den a heartbeat (the daemon's
status summary and the counts since the last one) every :data:`HEARTBEAT_INTERVAL_S` with the cluster's
heartbeat key, which Den accepts only for this cluster's heartbeat. Counts that could not be sent are kept for
the next one; nothing of this is on the call path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from runhouse.daemon_files import write_private
from runhouse.errors import (
    AuthenticationError,
    BadRequestError,
    DenUnreachableError,
    PermissionDeniedError,
)

ACCESS_TTL_S = 5.0
"""How long Den's answer about a token is used without asking again: a revoked share or token stops working
within this long."""
REFUSAL_TTL_S = 2.0
"""How long a refusal (a token Den does not know, or a user without access) is remembered."""
CACHE_ENTRIES = 4096
DEN_TIMEOUT_S = 5.0
"""How long the daemon waits for Den's answer about a token before refusing it."""
LOOKUPS_AT_ONCE = 16
MAX_TOKEN_LENGTH = 256
HEARTBEAT_INTERVAL_S = 30.0
HEARTBEAT_INTERVAL_ENV = "RH_HEARTBEAT_INTERVAL_S"
"""Read at the daemon's start: seconds between heartbeats (at least 1; default 30)."""
HEARTBEAT_TIMEOUT_S = 10.0
MAX_STATUS_BYTES = 32 * 1024
MAX_CALLERS_COUNTED = 1000
"""Callers counted between two heartbeats; requests of further ones are not counted (Den takes at most that many)."""
DAEMON_CALLER = "local"
"""The caller of requests made with the daemon's own token."""
DEN_ACCESS_PATH = "/v1/access"
DEN_HEARTBEAT_PATH = "/v1/heartbeats"
_BEARER = b"Bearer "
_MAX_ADDRESS_LENGTH = 1024


@dataclass(frozen=True)
class DenAuthSettings:
    """What a daemon with Den auth needs: Den's URL, the cluster's Den address and its heartbeat key."""

    den_url: str
    address: str
    heartbeat_key: str

    def __post_init__(self) -> None:
        url = urlsplit(self.den_url) if isinstance(self.den_url, str) else None
        if url is None or url.scheme not in ("http", "https") or not url.netloc:
            raise BadRequestError(f"den_url must be an http:// or https:// URL, not {str(self.den_url)[:100]!r}")
        address = self.address
        if (not isinstance(address, str) or not address.startswith("/") or len(address) > _MAX_ADDRESS_LENGTH
                or not address.isprintable() or " " in address or "//" in address or address.endswith("/")):
            raise BadRequestError(f"address must be a cluster's Den address like /alice/gpu, not "
                                  f"{str(address)[:100]!r}")
        key = self.heartbeat_key
        if not isinstance(key, str) or not key or len(key) > MAX_TOKEN_LENGTH or not _is_token_text(key):
            raise BadRequestError("heartbeat_key must be the key Den issued for the cluster")

    @classmethod
    def load(cls, path: PurePath) -> DenAuthSettings | None:
        """The settings kept at ``path``, or None when Den auth was never enabled there."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return None
        return cls(data["den_url"].rstrip("/"), data["address"], data["heartbeat_key"])

    def save(self, path: PurePath) -> None:
        """Keep the settings at ``path`` (owner-only: the heartbeat key is in it)."""
        write_private(path, json.dumps(asdict(self)))


def _is_token_text(text: str) -> bool:
    return text.isascii() and text.isprintable() and " " not in text


@dataclass(frozen=True)
class _Answer:
    expires: float
    user: str | None  # None: Den does not know the token
    access: str | None


class DenAuth:
    """The daemon's Den auth: checks tokens with Den (cached), counts requests, sends heartbeats.

    ``status`` makes the daemon's status summary for heartbeats; settings given to :meth:`configure` are kept
    in ``settings_file`` (None: not kept). Disabled until :meth:`configure` (or :meth:`load`) gives it settings.
    """

    def __init__(self, settings_file: PurePath | None, status: Callable[[], dict[str, Any]],
                 heartbeat_interval: float = HEARTBEAT_INTERVAL_S) -> None:
        self.settings_file = settings_file
        self.settings: DenAuthSettings | None = None
        self._status = status
        self._interval = heartbeat_interval
        self._cache: OrderedDict[bytes, _Answer] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[_Answer]] = {}
        self._lookups: asyncio.Semaphore | None = None
        self._http: httpx.AsyncClient | None = None
        self._counts: dict[str, int] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    @classmethod
    def load(cls, settings_file: PurePath, status: Callable[[], dict[str, Any]]) -> DenAuth:
        """The Den auth of a daemon starting: its kept settings, the heartbeat interval from the environment."""
        raw = os.environ.get(HEARTBEAT_INTERVAL_ENV)
        interval = HEARTBEAT_INTERVAL_S
        if raw:
            try:
                interval = max(1.0, float(raw))
            except ValueError:
                print(f"runhouse daemon: {HEARTBEAT_INTERVAL_ENV}={raw!r} is not a number of seconds; using "
                      f"{HEARTBEAT_INTERVAL_S:.0f}", file=sys.stderr)
        auth = cls(settings_file, status, interval)
        try:
            auth.settings = DenAuthSettings.load(settings_file)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            print(f"runhouse daemon: Den auth is off: {settings_file} is unreadable ({exc}); enable it again "
                  "with cluster.enable_den_auth()", file=sys.stderr)
        return auth

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    def describe(self) -> dict[str, str] | None:
        """Den's URL and the cluster's address when Den auth is on (never the key)."""
        settings = self.settings
        return None if settings is None else {"den_url": settings.den_url, "address": settings.address}

    # --- life ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the heartbeat task (on the daemon's event loop)."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeats())

    async def close(self) -> None:
        """Stop the heartbeat task and close the connections to Den."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def configure(self, settings: DenAuthSettings) -> None:
        """Turn Den auth on with ``settings`` once Den accepted a heartbeat with its key; keep them for restarts.

        Raises:
            DenUnreachableError: Den could not be reached from this daemon (nothing changed).
            AuthenticationError: Den refused the heartbeat key (nothing changed).
        """
        await self._send_heartbeat(settings, {}, 0)
        if self.settings_file is not None:
            settings.save(self.settings_file)
        self.settings = settings
        self._cache.clear()

    # --- tokens ----------------------------------------------------------------------------------------
    async def caller(self, authorization: bytes, needs: str) -> str:
        """The Den user whose token ``authorization`` (the header's value) carries, if they have ``needs``
        (``read`` or ``write``) access to the cluster in Den (``owner``: nobody but the daemon's own token).

        Raises:
            AuthenticationError: no bearer token, or one Den does not know (or that cannot be a Den token).
            PermissionDeniedError: a known user without enough access.
            DenUnreachableError: Den could not be asked (its ``status`` is 503).
        """
        settings = self.settings
        if settings is None:
            raise _wrong_token()
        if needs == "owner":
            raise PermissionDeniedError("changing this daemon's Den auth needs the daemon's own token "
                                        "(`runhouse token` prints it on the cluster), not a Den token")
        if not authorization.startswith(_BEARER):
            raise AuthenticationError("missing token: send 'Authorization: Bearer <token>', your Den token or the "
                                      "daemon's (`runhouse token` prints it)")
        token = authorization[len(_BEARER):].strip()
        if not token or len(token) > MAX_TOKEN_LENGTH or not _is_token_text(token.decode("latin-1")):
            raise _unknown_token(settings)
        answer = await self._answer(hashlib.sha256(token).digest(), token.decode("ascii"), settings)
        if answer.user is None:
            raise _unknown_token(settings)
        if answer.access is None or (needs == "write" and answer.access != "write"):
            raise _denied(answer.user, answer.access, needs, settings.address)
        return answer.user

    async def _answer(self, digest: bytes, token: str, settings: DenAuthSettings) -> _Answer:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached.expires > now:
            return cached
        pending = self._pending.get(digest)
        if pending is not None:  # the same token asked at once: one question to Den
            return await asyncio.shield(pending)
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            answer = await self._ask(token, settings)
            self._remember(digest, answer)
            future.set_result(answer)
            return answer
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._pending[digest]

    def _remember(self, digest: bytes, answer: _Answer) -> None:
        cache = self._cache
        cache.pop(digest, None)
        cache[digest] = answer
        while len(cache) > CACHE_ENTRIES:
            cache.popitem(last=False)

    async def _ask(self, token: str, settings: DenAuthSettings) -> _Answer:
        if self._lookups is None:
            self._lookups = asyncio.Semaphore(LOOKUPS_AT_ONCE)
        url = f"{settings.den_url}{DEN_ACCESS_PATH}{quote(settings.address)}"
        async with self._lookups:
            try:
                response = await self._client().get(url, headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError as exc:
                raise _den_down(settings, f"{type(exc).__name__}: {exc}") from None
        now = time.monotonic()
        if response.status_code == 401:
            return _Answer(now + REFUSAL_TTL_S, None, None)
        if response.status_code != 200:
            raise _den_down(settings, f"it answered HTTP {response.status_code}")
        try:
            data = response.json()
            user, access = str(data["user"]), data["access"]
        except (ValueError, KeyError, TypeError):
            raise _den_down(settings, "its answer was not Den's") from None
        if access not in ("read", "write"):
            return _Answer(now + REFUSAL_TTL_S, user, None)
        return _Answer(now + ACCESS_TTL_S, user, access)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=DEN_TIMEOUT_S)
        return self._http

    # --- usage -----------------------------------------------------------------------------------------
    def count(self, caller: str) -> None:
        """Count one request of ``caller`` (a Den user, or :data:`DAEMON_CALLER`) for the next heartbeat."""
        if self.settings is None:
            return
        counts = self._counts
        if caller in counts:
            counts[caller] += 1
        elif len(counts) < MAX_CALLERS_COUNTED:
            counts[caller] = 1

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            settings = self.settings
            if settings is None:
                continue
            counts, self._counts = self._counts, {}
            daemon_calls = counts.pop(DAEMON_CALLER, 0)
            try:
                await self._send_heartbeat(settings, counts, daemon_calls)
            except (DenUnreachableError, AuthenticationError) as exc:
                print(f"runhouse daemon: heartbeat to Den not sent, will retry: {exc}", file=sys.stderr)
                for caller, count in counts.items():  # kept for the next one
                    if caller in self._counts or len(self._counts) < MAX_CALLERS_COUNTED:
                        self._counts[caller] = self._counts.get(caller, 0) + count
                if daemon_calls:
                    self._counts[DAEMON_CALLER] = self._counts.get(DAEMON_CALLER, 0) + daemon_calls

    async def _send_heartbeat(self, settings: DenAuthSettings, counts: dict[str, int], daemon_calls: int) -> None:
        body = {"status": _summary(self._status()), "calls": counts, "daemon_calls": daemon_calls}
        url = f"{settings.den_url}{DEN_HEARTBEAT_PATH}{quote(settings.address)}"
        try:
            response = await self._client().post(url, json=body, timeout=HEARTBEAT_TIMEOUT_S,
                                                  headers={"Authorization": f"Bearer {settings.heartbeat_key}"})
        except httpx.HTTPError as exc:
            raise _den_down(settings, f"{type(exc).__name__}: {exc}", "send a heartbeat to") from None
        if response.status_code in (401, 403):
            raise AuthenticationError(f"Den at {settings.den_url} refused the heartbeat key of {settings.address}: "
                                      "enable Den auth again (cluster.enable_den_auth())")
        if response.status_code != 200:
            raise _den_down(settings, f"it answered HTTP {response.status_code}: {response.text[:200]}",
                            "send a heartbeat to")


def _summary(status: dict[str, Any]) -> dict[str, Any]:
    """The daemon's status as JSON for a heartbeat; over :data:`MAX_STATUS_BYTES`, only its top-level scalars."""
    text = json.dumps(status, default=str)
    if len(text) > MAX_STATUS_BYTES:
        return {key: value for key, value in json.loads(text).items() if not isinstance(value, (dict, list))}
    return json.loads(text)


def _wrong_token() -> AuthenticationError:
    return AuthenticationError("missing or wrong token: send 'Authorization: Bearer <token>' (`runhouse token` "
                               "prints it)")


def _unknown_token(settings: DenAuthSettings) -> AuthenticationError:
    return AuthenticationError(
        f"unknown token: it is neither this daemon's token nor a token Den at {settings.den_url} knows; log in "
        "again (rh.login) or send the daemon's own token (`runhouse token` prints it)")


def _denied(user: str, access: str | None, needs: str, address: str) -> PermissionDeniedError:
    if access is None:
        return PermissionDeniedError(
            f"{user} may not use the cluster {address}: using it needs read access in Den (calls) or write "
            f"access (deploying, commands, put/delete, envs); ask its owner to share it, e.g. "
            f"rh.cluster(name={address!r}).share([{user!r}], access_level='read')")
    return PermissionDeniedError(
        f"{user} has {access} access to the cluster {address} in Den, which lets them call what is deployed on "
        f"it; this needs {needs} access (deploying, commands, put/delete, envs, installs, autostop): ask its "
        "owner to share it with access_level='write'")


def _den_down(settings: DenAuthSettings, why: str, doing: str = "ask") -> DenUnreachableError:
    what = ("whether this token may use " + settings.address) if doing == "ask" else f"for {settings.address}"
    error = DenUnreachableError(
        f"this daemon accepts Den tokens but could not {doing} Den at {settings.den_url} {what} ({why}); retry "
        "when Den answers, or use the daemon's own token")
    error.status = 503  # type: ignore[attr-defined]
    return error
