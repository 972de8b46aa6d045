"""Authenticating to OpenHIM core's management API, on every core version.

Two schemes (OpenHIM core ``src/api/authentication.js``, ``src/protocols/token.js``):

- **Basic** (``Authorization: Basic base64(email:password)``): on by default from core 7.1;
- the **legacy token** headers, the only scheme up to 7.0 (deprecated, still on, in 7.2+):
  ``GET /authenticate/<email>`` (no auth) gives ``{salt, ts}``; then every request carries
  ``auth-username``, ``auth-ts``, ``auth-salt`` and ``auth-token = hex(sha512(passhash + salt + ts))``
  with ``passhash = hex(sha512(salt + password))`` (salt first). Core accepts ``auth-ts`` within
  ±10 s of its own clock and hashes the header string as sent.

Which one a core takes is found by trying, never configured: Basic first; on 401, the token
scheme; the scheme that worked is remembered until it is refused again (e.g. core was upgraded).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

import httpx

from cht_interop.openhim.errors import OpenHimRefused, OpenHimUnavailable


class Scheme(StrEnum):
    BASIC = "basic"
    TOKEN = "token"


def passhash(salt: str, password: str) -> str:
    """What core stores for a token-scheme user: ``hex(sha512(salt + password))``."""
    return hashlib.sha512((salt + password).encode()).hexdigest()


def auth_token(passhash_hex: str, salt: str, ts: str) -> str:
    """The ``auth-token`` header: ``hex(sha512(passhash + auth-salt + auth-ts))``."""
    return hashlib.sha512((passhash_hex + salt + ts).encode()).hexdigest()


def token_headers(username: str, password: str, salt: str, ts: str) -> dict[str, str]:
    return {
        "auth-username": username,
        "auth-ts": ts,
        "auth-salt": salt,
        "auth-token": auth_token(passhash(salt, password), salt, ts),
    }


def basic_header(username: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {encoded}"}


def without_userinfo(url: str) -> str:
    """``url`` without credentials written into it (``https://user:pass@host``): neither sent
    (httpx would turn them into a Basic header over ours) nor logged."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _iso_ms(moment: datetime) -> str:
    """JavaScript's ``Date.toISOString()``: what core itself sends as ``ts``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Authenticator:
    """Sends a management API request with whichever scheme the core takes (found by trying)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        username: str,
        password: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.http = http
        self.clock = clock
        self.base_url = without_userinfo(base_url)
        self.username = username
        self._password = password
        self.scheme: Scheme | None = None  # the scheme that last worked
        self._salt: str | None = None
        self._clock_offset = timedelta(0)  # core's clock minus ours, from /authenticate's ts

    async def request(self, method: str, path: str, *, json: object | None = None) -> httpx.Response:
        """The response to an authenticated request; ``OpenHimRefused`` when no scheme is accepted,
        ``OpenHimUnavailable`` when core cannot be reached or times out."""
        order = [self.scheme] if self.scheme else [Scheme.BASIC, Scheme.TOKEN]
        if self.scheme:
            order += [s for s in Scheme if s is not self.scheme]
        for scheme in order:
            headers = await self._headers(scheme)
            if headers is None:  # the token scheme has no salt for this user on this core
                continue
            response = await self._send(method, path, headers, json)
            if response.status_code != 401:
                self.scheme = scheme
                return response
            if scheme is Scheme.TOKEN:
                self._salt = None  # the password may have changed: ask again next time
        self.scheme = None
        raise OpenHimRefused("OpenHIM refused the credentials (tried Basic and token authentication)", 401)

    async def _send(
        self, method: str, path: str, headers: dict[str, str], json: object | None
    ) -> httpx.Response:
        try:
            return await self.http.request(method, self.base_url + path, headers=headers, json=json)
        except httpx.TimeoutException as exc:
            raise OpenHimUnavailable(f"OpenHIM did not answer in time ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise OpenHimUnavailable(f"OpenHIM cannot be reached ({type(exc).__name__})") from exc

    async def _headers(self, scheme: Scheme) -> dict[str, str] | None:
        if scheme is Scheme.BASIC:
            return basic_header(self.username, self._password)
        if self._salt is None and not await self._fetch_salt():
            return None
        assert self._salt is not None
        ts = _iso_ms(self.clock() + self._clock_offset)
        return token_headers(self.username, self._password, self._salt, ts)

    async def _fetch_salt(self) -> bool:
        """``GET /authenticate/<email>``: the salt, and core's clock (``auth-ts`` must be within its
        window of core's time, so ours is corrected by the difference)."""
        sent = self.clock()
        response = await self._send("GET", f"/authenticate/{self.username}", {}, None)
        if response.status_code != 200:
            return False  # unknown user, or (7.2+) a user without a token passport
        try:
            body = response.json()
            salt, core_ts = str(body["salt"]), str(body["ts"])
            core_now = datetime.fromisoformat(core_ts.replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            return False
        midpoint = sent + (self.clock() - sent) / 2
        self._clock_offset = core_now - midpoint
        self._salt = salt
        return True
