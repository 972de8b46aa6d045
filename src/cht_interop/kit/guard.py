"""The request guard, an ASGI middleware around every route: the body limit, and crashes.

Body limit: a request whose ``Content-Length`` is over the limit is answered 413 at once, its body
never read; a body without one (chunked) is counted as it arrives and refused as soon as it passes
the limit, so a 1 GiB upload costs the limit's worth of memory, not a gigabyte (the routes used to
read the whole body, then compare). The 413 says ``Connection: close``: the server then stops
reading the rest of the upload.

Crashes: an unexpected exception is answered with what the app's ``crash_answer`` makes of it (a
500 for a crash, logged, with ``Connection: close``; a 503 for a busy database, one log line, the
connection kept), and not raised on. (Starlette's own error middleware re-raises after sending its 500,
so the server closed the connection under a client that had been told nothing and reused it: its
next request failed with a reset.) A crash after the answer started is raised on, and the server
cuts the unfinished answer.

A client gone before its whole request arrived (a proxy's timeout, a script giving up under
overload) is no crash: one info line, nothing answered, and the transaction log's status is 499
(``CLIENT_CLOSED_REQUEST``, the code proxies log for it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cht_interop.kit.http import FHIR_JSON

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a request body passes the limit; answered 413 by the guard."""


def too_large_answer(limit: int) -> bytes:
    """The 413 OperationOutcome (FHIR's ``too-long``)."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "too-long",
                "diagnostics": f"Request body is larger than {limit} bytes (MAX_BODY_BYTES)",
            }
        ],
    }
    return orjson.dumps(outcome)


# where a crash's description is left in the ASGI scope for the middlewares outside (the log)
CRASH_KEY = "cht_interop.crash"
# where the status the transaction log records is left when no answer was sent (the client left)
UNANSWERED_STATUS_KEY = "cht_interop.unanswered_status"
CLIENT_CLOSED_REQUEST = 499


class RequestGuard:
    """ASGI middleware: bodies over ``max_body_bytes`` get a 413; crashes ``crash_answer(exc)``."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, crash_answer: Callable[[Exception], Response]
    ) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.crash_answer = crash_answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._send_too_large(send)
            return
        received = 0
        started = finished = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(f"request body over {self.limit} bytes")
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await self._send_too_large(send)
        except ClientDisconnect:
            log.info(
                "%s %s: the client was gone before its request arrived",
                scope.get("method"),
                scope.get("path"),
            )
            scope[CRASH_KEY] = "the client disconnected before sending its whole request"
            scope[UNANSWERED_STATUS_KEY] = CLIENT_CLOSED_REQUEST
        except Exception as exc:
            answer = self.crash_answer(exc)
            crashed = answer.status_code == 500
            if crashed:
                log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            else:
                log.warning(
                    "%s %s answered %d: %s", scope.get("method"), scope.get("path"), answer.status_code, exc
                )
            scope[CRASH_KEY] = f"{type(exc).__name__}: {exc}"  # for the transaction log outside
            if finished:
                return  # the client has its whole answer; nothing to cut
            if started:
                raise
            await answer(scope, receive, _closing(send) if crashed else send)

    async def _send_too_large(self, send: Send) -> None:
        body = too_large_answer(self.limit)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", FHIR_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _closing(send: Send) -> Send:
    """``send`` with ``Connection: close`` added to the answer's headers."""

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing_send


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
