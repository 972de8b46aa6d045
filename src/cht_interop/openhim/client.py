"""The mediator's calls to OpenHIM core's management API (``src/api/mediators.js``).

Every answer is read as core gives it: 201 ``Created`` (no body) for a registration, new or
repeated; a heartbeat's 200 body is the stored config when asked for (``config: true``) or changed
since the last heartbeat, else empty, or the text ``OK`` when config was asked for and none is
stored; 404 for an unknown urn; 400/403 as plain text.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx

from cht_interop.openhim.auth import Authenticator, Scheme
from cht_interop.openhim.errors import OpenHimRefused, OpenHimRejected, OpenHimUnavailable
from cht_interop.openhim.mediator import URN


def expect_status(response: httpx.Response, what: str, expected: int) -> None:
    """Nothing when core answered ``expected``; else the error that says why, in one line."""
    status = response.status_code
    if status == expected:
        return
    text = response.text.strip().replace("\n", " ")[:300]
    if status >= 500:
        raise OpenHimUnavailable(f"{what}: OpenHIM answered {status} {text}", status)
    if status == 403:
        raise OpenHimRefused(f"{what}: OpenHIM answered 403 (the user lacks mediator permissions)", status)
    raise OpenHimRejected(f"{what}: OpenHIM answered {status} {text}", status)


class OpenHimClient:
    """Register, heartbeat and install default channels, authenticated as core accepts."""

    def __init__(self, http: httpx.AsyncClient, api_url: str, username: str, password: str) -> None:
        self.auth = Authenticator(http, api_url, username, password)
        self._urn_path = f"/mediators/{quote(URN, safe=':')}"

    @property
    def scheme(self) -> Scheme | None:
        return self.auth.scheme

    async def register(self, document: dict[str, Any]) -> None:
        """``POST /mediators``: 201 whether new, repeated (no change) or a newer version (replaces)."""
        response = await self.auth.request("POST", "/mediators", json=document)
        expect_status(response, "registration", 201)

    async def heartbeat(self, uptime: float, *, want_config: bool = False) -> dict[str, Any] | None:
        """``POST /mediators/:urn/heartbeat``: the config core returned, if any."""
        body: dict[str, Any] = {"uptime": uptime}
        if want_config:
            body["config"] = True
        response = await self.auth.request("POST", f"{self._urn_path}/heartbeat", json=body)
        expect_status(response, "heartbeat", 200)
        text = response.text.strip()
        if text in ("", "OK"):
            return None
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise OpenHimRejected("heartbeat: OpenHIM's answer is not JSON") from exc
        return config if isinstance(config, dict) else None

    async def install_channels(self, names: list[str]) -> None:
        """``POST /mediators/:urn/channels`` with channel names (``[]`` installs every default one).

        Core answers 500 when a channel of that name already exists (a second install)."""
        response = await self.auth.request("POST", f"{self._urn_path}/channels", json=names)
        expect_status(response, "channel install", 201)

    async def stored_config(self) -> dict[str, Any] | None:
        """``GET /mediators/:urn``'s ``config``: what a replica that does not heartbeat applies."""
        response = await self.auth.request("GET", self._urn_path)
        expect_status(response, "mediator read", 200)
        try:
            config = response.json().get("config")
        except (ValueError, AttributeError) as exc:
            raise OpenHimRejected("mediator read: OpenHIM's answer is not a JSON object") from exc
        return config if isinstance(config, dict) else None
