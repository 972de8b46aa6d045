"""HTTP Basic authentication of interop clients.

Verification uses the scrypt hash; a verified (client, password) pair is remembered only as an
HMAC under a per-process key, so repeated requests do not pay scrypt's cost each time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

import anyio
from fastapi import Request

from cht_interop.gateway.errors import AuthenticationRequired
from cht_interop.gateway.principals import Principal, Role


@dataclass
class ClientAuthenticator:
    """Checks Basic credentials against the known clients (id → scrypt hash)."""

    clients: dict[str, str]
    _cache_key: bytes = field(init=False, default_factory=lambda: secrets.token_bytes(32))
    _verified: set[bytes] = field(init=False, default_factory=set)

    def _fingerprint(self, client_id: str, password: str) -> bytes:
        return hmac.new(self._cache_key, f"{client_id}\0{password}".encode(), hashlib.sha256).digest()

    def verify(self, client_id: str, password: str) -> bool:
        known = self.verified_before(client_id, password)
        return known if known is not None else self.verify_slowly(client_id, password)

    def verified_before(self, client_id: str, password: str) -> bool | None:
        """True/False when it can be told without scrypt (verified before, unknown client); else None."""
        if client_id not in self.clients:
            return False
        return True if self._fingerprint(client_id, password) in self._verified else None

    def verify_slowly(self, client_id: str, password: str) -> bool:
        """The scrypt check (~0.1 s of CPU by design); remembered when it succeeds."""
        from cht_interop.gateway.passwords import verify_password

        stored = self.clients.get(client_id)
        if stored is None or not verify_password(password, stored):
            return False
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified.add(self._fingerprint(client_id, password))
        return True

    def authenticate(self, request: Request) -> str:
        """The client id of a request, or AuthenticationRequired (401 + WWW-Authenticate)."""
        client_id, password = self.credentials(request)
        if not self.verify(client_id, password):
            raise AuthenticationRequired("Invalid credentials")
        return client_id

    async def login(self, client_id: str, password: str) -> Principal | None:
        """The client these credentials prove, or None (the console's login form uses this)."""
        known = self.verified_before(client_id, password)
        if known is None:
            known = await anyio.to_thread.run_sync(self.verify_slowly, client_id, password)
        if not known:
            return None
        return Principal(client_id, client_id, frozenset({Role.INTEROP}))

    async def authenticate_async(self, request: Request) -> str:
        """As ``authenticate``, without blocking the event loop: the remembered case is checked
        inline, scrypt (first request with a password, or a wrong one) runs in a worker thread."""
        client_id, password = self.credentials(request)
        known = self.verified_before(client_id, password)
        if known is None:
            known = await anyio.to_thread.run_sync(self.verify_slowly, client_id, password)
        if not known:
            raise AuthenticationRequired("Invalid credentials")
        return client_id

    @staticmethod
    def credentials(request: Request) -> tuple[str, str]:
        """(client id, password) from the Basic header, or AuthenticationRequired."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            raise AuthenticationRequired("Authentication required")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationRequired("Malformed Basic credentials") from None
        client_id, sep, password = decoded.partition(":")
        if not sep:
            raise AuthenticationRequired("Invalid credentials")
        return client_id, password


async def require_client(request: Request) -> str:
    """FastAPI dependency: the authenticated client id for this request (async, so FastAPI does
    not send every request through its thread pool for it)."""
    authenticator: ClientAuthenticator = request.app.state.services.authenticator
    client_id = await authenticator.authenticate_async(request)
    request.state.client_id = client_id
    request.state.principal = Principal(client_id, client_id, frozenset({Role.INTEROP}))
    return client_id
