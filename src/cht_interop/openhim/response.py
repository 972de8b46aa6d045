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
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cht_interop.kit import exchanges
from cht_interop.kit.exchanges import Exchange
from cht_interop.openhim.mediator import URN

log = logging.getLogger(__name__)
JSON_OPENHIM = "application/json+openhim"
TRANSACTION_HEADER = b"x-openhim-transactionid"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
SECRET_WORDS = ("password", "secret", "token", "authorization", "cookie", "api-key", "apikey")
HIDDEN = "***"
_SECRET_PAIR = re.compile(r"((?:password|secret|token)[^=&\s:\"]*[=:]\s*)[^&\s\"]+", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(://)[^/@\s\"]+@")


def _secret(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_HEADERS or any(w in lowered for w in SECRET_WORDS)


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers without credentials (Authorization, Cookie, anything naming a password/token)."""
    return {k: v for k, v in headers.items() if not _secret(k)}


def _redact_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: HIDDEN if _secret(str(k)) else _redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v) for v in value]
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(r"\1", value)
    return value


def redact(body: bytes) -> str:
    """A body as a string, with passwords, tokens and URL credentials replaced."""
    text = body.decode("utf-8", errors="replace")
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return _URL_CREDENTIALS.sub(r"\1", _SECRET_PAIR.sub(rf"\1{HIDDEN}", text))
    if parsed is None:
        return text
    redacted = _redact_json(parsed)
    return text if redacted == parsed else orjson.dumps(redacted).decode()


def transaction_status(status: int, orchestrations: list[dict[str, Any]]) -> str:
    """Core's own rule (reference §2.7), the orchestrations standing for its non-primary routes:
    a 5xx answer is Failed; else an orchestration without answer or answered 5xx makes it Completed
    with error(s); a 2xx/3xx answer with every orchestration 2xx/3xx is Successful; else Completed
    (a 4xx answer: the client's request was refused)."""
    if status >= 500:
        return "Failed"
    answers = [o.get("response", {}).get("status") for o in orchestrations]
    if any(a is None or a >= 500 for a in answers):
        return "Completed with error(s)"
    if status < 400 and all(a < 400 for a in answers):
        return "Successful"
    return "Completed"


def orchestration(exchange: Exchange) -> dict[str, Any]:
    url = exchange.url
    port = url.port or (443 if url.scheme == "https" else 80)
    entry: dict[str, Any] = {
        "name": f"{exchange.method} {url.host}{url.path}",
        "request": {
            "host": url.host,
            "port": str(port),
            "path": url.path,
            "querystring": unquote(url.query.decode("ascii", errors="replace")),
            "method": exchange.method,
            "headers": redact_headers(exchange.headers),
            "body": redact(exchange.body),
            "timestamp": exchange.sent_at,
        },
    }
    if exchange.status is None:
        entry["error"] = {"message": "no response: the call failed or timed out", "stack": ""}
    else:
        entry["response"] = {
            "status": exchange.status,
            "headers": redact_headers(exchange.response_headers),
            "body": redact(exchange.response_body),
            "timestamp": exchange.answered_at,
        }
    return entry


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

    ``crash_answer`` is the plain answer to an unexpected exception (an ASGI app, e.g. the 500
    OperationOutcome): a wrapped request's exception is answered here, wrapped, since the server's
    own error handler sits outside this middleware."""

    def __init__(self, app: ASGIApp, *, prefix: str, crash_answer: Callable[[], ASGIApp]) -> None:
        self.app = app
        self.prefix = prefix
        self.crash_answer = crash_answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._routed(scope):
            await self.app(scope, receive, send)
            return
        recording = exchanges.start()
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, receive, keep)
        except Exception:
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            start.clear()
            chunks.clear()
            await self.crash_answer()(scope, receive, keep)
        status = int(start.get("status", 500))
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])}
        body = orjson.dumps(envelope(status, headers, b"".join(chunks), recording))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", JSON_OPENHIM.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _routed(self, scope: Scope) -> bool:
        path: str = scope.get("path", "")
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            return False
        return any(name == TRANSACTION_HEADER for name, _ in scope.get("headers", []))
