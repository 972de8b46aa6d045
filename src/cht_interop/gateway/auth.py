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

from fastapi import Request

from cht_interop.fhir.errors import AuthenticationRequired

REALM = 'Basic realm="cht-interop", charset="UTF-8"'


@dataclass
class ClientAuthenticator:
    """Checks Basic credentials against the known clients (id → scrypt hash)."""

    clients: dict[str, str]
    _cache_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _verified: set[bytes] = field(default_factory=set)

    def _fingerprint(self, client_id: str, password: str) -> bytes:
        return hmac.new(self._cache_key, f"{client_id}\0{password}".encode(), hashlib.sha256).digest()

    def verify(self, client_id: str, password: str) -> bool:
        from cht_interop.gateway.passwords import verify_password

        stored = self.clients.get(client_id)
        if stored is None:
            return False
        fp = self._fingerprint(client_id, password)
        if fp in self._verified:
            return True
        if verify_password(password, stored):
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified.add(fp)
            return True
        return False

    def authenticate(self, request: Request) -> str:
        """The client id of a request, or AuthenticationRequired (401 + WWW-Authenticate)."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            raise AuthenticationRequired("Authentication required", headers={"WWW-Authenticate": REALM})
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationRequired(
                "Malformed Basic credentials", headers={"WWW-Authenticate": REALM}
            ) from None
        client_id, sep, password = decoded.partition(":")
        if not sep or not self.verify(client_id, password):
            raise AuthenticationRequired("Invalid credentials", headers={"WWW-Authenticate": REALM})
        return client_id


def require_client(request: Request) -> str:
    """FastAPI dependency: the authenticated client id for this request."""
    authenticator: ClientAuthenticator = request.app.state.services.authenticator
    client_id = authenticator.authenticate(request)
    request.state.client_id = client_id
    return client_id
