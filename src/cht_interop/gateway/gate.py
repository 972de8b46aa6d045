"""The gate: ASGI middleware that admits every HTTP request outside ``policy.OPEN_PREFIXES`` through
``auth.admit`` (authentication, then the policy's role), whatever serves it: the routers, the
OpenAPI description, routes added later. The admitted client is left on ``request.state``
(``principal``, ``client_id``) for the handlers and the transaction log.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cht_interop.gateway.auth import admit
from cht_interop.gateway.errors import GatewayRefusal
from cht_interop.gateway.policy import is_open


class Gatekeeper:
    """``refuse`` renders a refusal (the app makes it a FHIR OperationOutcome)."""

    def __init__(self, app: ASGIApp, refuse: Callable[[GatewayRefusal], Response]) -> None:
        self.app = app
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            principal = await admit(Request(scope))
        except GatewayRefusal as refusal:
            await self.refuse(refusal)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["client_id"] = principal.client_id
        await self.app(scope, receive, send)
