"""HTTP Basic authentication of API clients.

A password is checked with scrypt against the client's stored hash, off the event loop. An
unknown client id is checked against a dummy hash with the same cost, so the answer takes as long
as for a wrong password and tells no ids. A verified (client, password) pair is remembered as an
HMAC under a per-process key, with the hash it matched: the next requests pay no scrypt, and the
client's row is re-read every ``recheck_seconds`` (a password changed or a client removed by
another process stops counting by then; in this process at once, see ``ClientDirectory.on_change``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

import anyio
from fastapi import Request
from starlette.routing import Match

from cht_interop.gateway.clients import ClientDirectory, ClientInfo, StoredClient
from cht_interop.gateway.errors import AuthenticationRequired, Forbidden, TooManyFailures
from cht_interop.gateway.passwords import dummy_hash, verify_password
from cht_interop.gateway.policy import rule_for
from cht_interop.gateway.principals import Principal, Role
from cht_interop.gateway.throttle import FailureThrottle

MAX_REMEMBERED = 10_000


class ClientLookup(Protocol):
    """Where clients are found: ``ClientDirectory`` (the database) or ``StaticClients``."""

    async def find(self, client_id: str) -> StoredClient | None: ...


class StaticClients:
    """Clients fixed in memory (id -> scrypt hash), each with the ``interop`` role: tests and tools."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        when = datetime(2000, 1, 1, tzinfo=UTC)
        roles = frozenset({Role.INTEROP})
        self._clients = {
            cid: StoredClient(ClientInfo(cid, cid, roles, when, when), hashed, 1)
            for cid, hashed in hashes.items()
        }

    async def find(self, client_id: str) -> StoredClient | None:
        return self._clients.get(client_id)


@dataclass(frozen=True)
class _Verified:
    fingerprint: bytes  # HMAC of (client id, password) under the process's key
    password_hash: str  # the stored hash the password matched
    principal: Principal
    checked_at: float


class ClientAuthenticator:
    """Checks Basic credentials against the clients; answers who the client is (a Principal)."""

    def __init__(
        self,
        clients: ClientLookup | Mapping[str, str],
        *,
        recheck_seconds: float = 5.0,
        throttle: FailureThrottle | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clients: ClientLookup = StaticClients(clients) if isinstance(clients, Mapping) else clients
        self.recheck_seconds = recheck_seconds
        self.throttle = throttle or FailureThrottle()
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, _Verified] = {}
        self._generation: dict[str, int] = {}  # bumped by ``forget``: a check begun before it is not kept
        dummy_hash()  # made now (once per process), not while the first unknown id waits for it

    @property
    def directory(self) -> ClientDirectory | None:
        """The database's clients (add, list, set_password, remove: what the console calls), when
        this authenticator checks against them."""
        return self.clients if isinstance(self.clients, ClientDirectory) else None

    def forget(self, client_id: str) -> None:
        """Stop trusting what was verified for this client (its password changed, or it was removed)."""
        self._verified.pop(client_id, None)
        self._generation[client_id] = self._generation.get(client_id, 0) + 1

    def _fingerprint(self, client_id: str, password: str) -> bytes:
        # the one-shot HMAC: ``hmac.new`` builds an object per call (~3x the CPU, every request)
        return hmac.digest(self._key, f"{client_id}\0{password}".encode(), hashlib.sha256)

    def _remembered(self, client_id: str, password: str) -> _Verified | None:
        entry = self._verified.get(client_id)
        if entry is not None and hmac.compare_digest(
            entry.fingerprint, self._fingerprint(client_id, password)
        ):
            return entry
        return None

    async def login(self, client_id: str, password: str, address: str | None = None) -> Principal | None:
        """The client these credentials prove, or None (the console's login form uses this).

        With the caller's ``address``, a failure counts toward that address's throttle, and an
        address with too many recent failures gets TooManyFailures (429) without a check, unless
        this password was verified here before."""
        # looked up once: the throttle's exemption and the check's hot path both use it
        remembered = self._remembered(client_id, password)
        if address is not None and remembered is None:
            wait = self.throttle.retry_after(address)
            if wait is not None:
                raise TooManyFailures(wait)
        principal = await self._check(client_id, password, remembered)
        if principal is None and address is not None:
            self.throttle.failed(address)
        return principal

    async def _check(self, client_id: str, password: str, entry: _Verified | None) -> Principal | None:
        """``entry``: what ``_remembered`` gave for these credentials (None: nothing)."""
        if entry is not None and self.clock() - entry.checked_at < self.recheck_seconds:
            return entry.principal  # the hot path: no I/O, no scrypt
        generation = self._generation.get(client_id, 0)
        stored = await self.clients.find(client_id)
        if entry is not None:
            if stored is not None and stored.password_hash == entry.password_hash:
                return self._keep(client_id, generation, replace(entry, principal=stored.info.principal()))
            self._verified.pop(client_id, None)
        if not await anyio.to_thread.run_sync(self._verify_slowly, password, stored):
            return None
        assert stored is not None
        fingerprint = self._fingerprint(client_id, password)
        verified = _Verified(fingerprint, stored.password_hash, stored.info.principal(), 0.0)
        return self._keep(client_id, generation, verified)

    def _keep(self, client_id: str, generation: int, entry: _Verified) -> Principal:
        if self._generation.get(client_id, 0) == generation:  # not forgotten meanwhile
            if len(self._verified) >= MAX_REMEMBERED and client_id not in self._verified:
                self._verified.clear()
            self._verified[client_id] = replace(entry, checked_at=self.clock())
        return entry.principal

    @staticmethod
    def _verify_slowly(password: str, stored: StoredClient | None) -> bool:
        """scrypt (~50 ms of CPU by design), against the dummy hash for an unknown client."""
        if stored is None:
            verify_password(password, dummy_hash())
            return False
        return verify_password(password, stored.password_hash)

    async def authenticate(self, request: Request) -> Principal:
        """The client of a request, or AuthenticationRequired (401 + WWW-Authenticate); a request
        from an address with too many recent failures gets TooManyFailures (429), unless its
        password was verified here before."""
        address = request.client.host if request.client else ""
        try:
            client_id, password = self.credentials(request)
        except AuthenticationRequired:
            if "authorization" in request.headers:
                self.throttle.failed(address)
            raise
        principal = await self.login(client_id, password, address)
        if principal is None:
            raise AuthenticationRequired("Invalid credentials")
        return principal

    async def authenticate_async(self, request: Request) -> str:
        """The authenticated client id (kept for callers of the one-client gateway)."""
        return (await self.authenticate(request)).client_id

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
    """FastAPI dependency: the client the gate admitted (``gate.Gatekeeper`` sets
    ``request.state.principal``); admits the request itself in an app without the gate."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        principal = await admit(request)
        request.state.principal = principal
        request.state.client_id = principal.client_id
    return principal.client_id


def served(request: Request) -> bool:
    """Whether some route runs a handler for this method and path. When none does, the router
    answers 404, or 405 with the path's real methods in ``Allow``: an authenticated client is let
    through to learn that, whatever its roles, since nothing is read or written."""
    routes = getattr(request.app, "routes", [])
    return any(route.matches(request.scope)[0] == Match.FULL for route in routes)


async def admit(request: Request) -> Principal:
    """Authenticate the request's client and check its roles against ``policy.POLICY``: the one
    check every route outside ``policy.OPEN_PREFIXES`` goes through."""
    authenticator: ClientAuthenticator = request.app.state.services.authenticator
    principal = await authenticator.authenticate(request)
    method, path = request.method, request.scope["path"]
    rule = rule_for(method, path)
    if not rule.allows(principal) and served(request):
        raise Forbidden(
            f"Client {principal.client_id!r} may not {method} {path}: it needs the role {rule.role}"
        )
    return principal
