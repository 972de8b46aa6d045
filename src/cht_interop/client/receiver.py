"""The facility's callback receiver: rest-hook notifications in, the Encounter to your function.

The server notifies as HAPI FHIR does: ``PUT <callback>/Encounter/<id>`` with the Encounter (an
``If-Match`` naming its version) and ``X-Notification-Id``, stable across retries of one
notification. It counts a 2xx with an empty body as delivered and retries anything else; so this
receiver answers ``200`` with no body once your function has returned, ``500`` if it raised (the
server retries later), and ``400`` with an OperationOutcome for a body that is no resource.

Retries and redeliveries are dropped by notification id (else by resource version), remembering
the last ``remember`` ids (bounded memory); a duplicate arriving while the first is still being
handled waits for it and answers as it did. ``secret_path``: answer only under
``/<secret_path>/…`` (an unguessable callback address; the server sends no credentials of its own).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

NOTIFICATION_ID_HEADER = "x-notification-id"


@dataclass(frozen=True, slots=True)
class Notification:
    """What came with the resource: the notification id and the resource's address."""

    notification_id: str | None
    resource_type: str
    resource_id: str
    version_id: str | None
    path: str


Handler = Callable[[dict[str, Any], Notification], Awaitable[None]]


def _outcome(status: int, text: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}],
    }
    return JSONResponse(body, status_code=status, media_type="application/fhir+json")


class CallbackReceiver:
    """An ASGI app (``receiver.app``) handing each notified Encounter, once, to ``handler``."""

    def __init__(
        self,
        handler: Handler,
        *,
        remember: int = 100_000,
        secret_path: str | None = None,
        resource_types: tuple[str, ...] = ("Encounter",),
    ) -> None:
        self.handler = handler
        self.remember = remember
        self.secret_path = secret_path.strip("/") if secret_path else None
        self.resource_types = resource_types
        self._done: OrderedDict[str, bool] = OrderedDict()  # key → handled (oldest first)
        self._running: dict[str, asyncio.Future[bool]] = {}
        self.received = 0
        self.duplicates = 0
        self.app = Starlette(
            routes=[Route("/{path:path}", self._receive, methods=["PUT", "POST"])],
        )

    async def _receive(self, request: Request) -> Response:
        path = request.url.path
        if self.secret_path is not None:
            head, _, path = path.lstrip("/").partition("/")
            if not hmac.compare_digest(head, self.secret_path):
                return Response(status_code=404)
            path = "/" + path
        body = await request.body()
        if request.method == "POST" and not body.strip():
            return Response(status_code=200)  # a Subscription without payload: a bare ping
        try:
            resource = json.loads(body)
        except ValueError:
            return _outcome(400, "the body is not JSON")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return _outcome(400, "the body is not a FHIR resource (no resourceType)")
        parts = [p for p in path.split("/") if p]
        rtype = str(resource["resourceType"])
        rid = str(resource.get("id") or "")
        if request.method == "PUT" and (len(parts) < 2 or parts[-2] != rtype or parts[-1] != rid):
            return _outcome(400, f"the URL names {'/'.join(parts[-2:])}, the body {rtype}/{rid}")
        version = (resource.get("meta") or {}).get("versionId") or _if_match_version(request)
        notification = Notification(
            notification_id=request.headers.get(NOTIFICATION_ID_HEADER),
            resource_type=rtype,
            resource_id=rid,
            version_id=str(version) if version else None,
            path=path,
        )
        self.received += 1
        if rtype not in self.resource_types:
            return Response(status_code=200)  # not ours to hand on; delivered all the same
        key = notification.notification_id or f"{rtype}/{rid}/_history/{notification.version_id}"
        handled = await self._once(key, resource, notification)
        return Response(status_code=200 if handled else 500)

    async def _once(self, key: str, resource: dict[str, Any], notification: Notification) -> bool:
        if self._done.get(key):
            self.duplicates += 1
            self._done.move_to_end(key)
            return True
        running = self._running.get(key)
        if running is not None:
            self.duplicates += 1
            return await asyncio.shield(running)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            await self.handler(resource, notification)
        except Exception:
            future.set_result(False)  # not remembered: the server's retry is handled afresh
            return False
        finally:
            del self._running[key]
        self._done[key] = True
        while len(self._done) > self.remember:
            self._done.popitem(last=False)
        future.set_result(True)
        return True


def _if_match_version(request: Request) -> str | None:
    """``If-Match: W/"3"`` or ``"3"`` → ``3``."""
    value = request.headers.get("if-match")
    if not value:
        return None
    return value.removeprefix("W/").strip('"') or None
