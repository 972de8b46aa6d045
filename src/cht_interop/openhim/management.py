"""OpenHIM core's management API for clients and channels: what ``openhim configure`` reads and writes.

As core answers (``src/api/clients.js``, ``src/api/channels.js``, ``src/api/about.js``):
``GET /clients`` and ``GET /channels`` list documents with their Mongo ``_id``; ``POST`` answers 201
with a text body and no id; ``PUT /<kind>/:_id`` answers 200; a refused document is a 400 (409
when a client id equals a role name) with core's reason as text. ``GET /about`` gives
``currentCoreVersion`` on every core this supports.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from cht_interop.openhim.auth import Authenticator
from cht_interop.openhim.client import expect_status
from cht_interop.openhim.errors import OpenHimRejected


class ManagementApi:
    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    async def core_version(self) -> str | None:
        response = await self.auth.request("GET", "/about")
        if response.status_code != 200:
            return None
        try:
            version = response.json().get("currentCoreVersion")
        except (ValueError, AttributeError):
            return None
        return str(version) if version else None

    async def clients(self) -> list[dict[str, Any]]:
        return await self._list("/clients", "client list")

    async def channels(self) -> list[dict[str, Any]]:
        return await self._list("/channels", "channel list")

    async def add(self, kind: str, document: dict[str, Any]) -> None:
        """``POST /clients`` or ``POST /channels``."""
        response = await self.auth.request("POST", f"/{kind}", json=document)
        expect_status(response, f"{kind} create ({_name(document)})", 201)

    async def update(self, kind: str, object_id: str, document: dict[str, Any]) -> None:
        """``PUT /clients/:_id`` or ``PUT /channels/:_id``."""
        response = await self.auth.request("PUT", f"/{kind}/{quote(object_id, safe='')}", json=document)
        expect_status(response, f"{kind} update ({_name(document)})", 200)

    async def _list(self, path: str, what: str) -> list[dict[str, Any]]:
        response = await self.auth.request("GET", path)
        expect_status(response, what, 200)
        try:
            items = response.json()
        except ValueError as exc:
            raise OpenHimRejected(f"{what}: OpenHIM's answer is not JSON") from exc
        if not isinstance(items, list):
            raise OpenHimRejected(f"{what}: OpenHIM's answer is not a list")
        return [item for item in items if isinstance(item, dict)]


def _name(document: dict[str, Any]) -> str:
    return str(document.get("clientID") or document.get("name") or "?")
