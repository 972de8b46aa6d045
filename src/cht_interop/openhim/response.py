"""Answers in OpenHIM's ``application/json+openhim`` to the ``/mediator`` requests core routed.

Only a request carrying ``X-OpenHIM-TransactionID`` (the header core adds when it forwards,
reference §1.6) is wrapped; every other request is answered exactly as before. The wrapped body
(§1.7): ``x-mediator-urn``; ``status`` by what happened (``transaction_status``); ``response``, the
plain answer (status, headers, body as a string, timestamp), which core gives its client;
``orchestrations``, one per outbound HTTP call the request made (``kit.exchanges``); ``properties``
the request noted; ``error`` for a 5xx. Credentials never leave: ``redact``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cht_interop.kit import exchanges
from cht_interop.kit.exchanges import orchestration, transaction_status
from cht_interop.kit.redaction import HIDDEN, redact, redact_headers
from cht_interop.openhim.mediator import URN

log = logging.getLogger(__name__)
JSON_OPENHIM = "application/json+openhim"
TRANSACTION_HEADER = b"x-openhim-transactionid"
# the transaction log's id header, kept on the wrapped answer (it equals core's transaction id)
JOURNAL_HEADER = b"x-transaction-id"
__all__ = [
    "HIDDEN",
    "OpenHimResponses",
    "envelope",
    "orchestration",
    "redact",
    "redact_headers",
    "transaction_status",
]


def envelope(
    status: int, headers: dict[str, str], body: bytes, recording: exchanges.Recording
) -> dict[str, Any]:
    """The §1.7 document for a plain answer and what the request did."""
    orchestrations = [orchestration(e) for e in recording.exchanges]
    kept = {k: v for k, v in redact_headers(headers).items() if k.lower() != "content-length"}
    doc: dict[str, Any] = {
        "x-mediator-urn": URN,
        "status": transaction_status(status, orchestrations),
        "response": {
            "status": status,
            "headers": kept,
            "body": redact(body),
            "timestamp": exchanges.now_iso(),
        },
        "orchestrations": orchestrations,
        "properties": dict(recording.properties),
    }
    if status >= 500:
        doc["error"] = {"message": _diagnostics(body) or f"the mediator answered {status}", "stack": ""}
    return doc


def _diagnostics(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(data, dict):
        return ""
    issues = data.get("issue") or []
    texts = [str(i.get("diagnostics", "")) for i in issues if isinstance(i, dict)]
    return "; ".join(t for t in texts if t)


class OpenHimResponses:
    """ASGI middleware: wraps the answers to ``prefix`` requests that carry core's transaction id.

    ``crash_answer(exc)`` is the plain answer to an unexpected exception (the 500 OperationOutcome,
    or a 503 for a busy database): a wrapped request's exception is answered here, wrapped, since
    the server's own error handler sits outside this middleware."""

    def __init__(self, app: ASGIApp, *, prefix: str, crash_answer: Callable[[Exception], ASGIApp]) -> None:
        self.app = app
        self.prefix = prefix
        self.crash_answer = crash_answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._routed(scope):
            await self.app(scope, receive, send)
            return
        # one recording for the request: the transaction log's (inside this middleware) shares it
        recording = exchanges.start(_transaction_id(scope))
        exchanges.attach(scope, recording)
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, receive, keep)
        except Exception as exc:
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            start.clear()
            chunks.clear()
            await self.crash_answer(exc)(scope, receive, keep)
        status = int(start.get("status", 500))
        raw_headers = start.get("headers", [])
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
        body = orjson.dumps(envelope(status, headers, b"".join(chunks), recording))
        # the transaction id (core's), also on a crash answer the journal never saw leave
        kept = (
            [(JOURNAL_HEADER, recording.transaction_id.encode("latin-1"))] if recording.transaction_id else []
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", JSON_OPENHIM.encode()),
                    (b"content-length", str(len(body)).encode()),
                    *kept,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _routed(self, scope: Scope) -> bool:
        path: str = scope.get("path", "")
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            return False
        return any(name == TRANSACTION_HEADER for name, _ in scope.get("headers", []))


def _transaction_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == TRANSACTION_HEADER:
            return str(value.decode("latin-1")).strip() or None
    return None
