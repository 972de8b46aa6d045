"""What one inbound request did on the way: its outbound HTTP calls and the properties it names.

Domain-free and off by default. Whoever answers a request may call ``start()``; from then on, in
that request's context (a ``contextvars`` value, so background tasks started elsewhere are never
counted), every call on an ``httpx.AsyncClient`` given ``install(client)`` is kept as an
``Exchange``, and ``note(name, value)`` keeps a property (a follow-up id, a Task status). Outside a
recording both are no-ops costing one context-variable read.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

_CURRENT: contextvars.ContextVar[Recording | None] = contextvars.ContextVar("exchanges", default=None)
_EXCHANGE_KEY = "cht_interop.exchange"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Exchange:
    """One outbound HTTP call: the request as sent, and the response (None if none came)."""

    method: str
    url: httpx.URL
    headers: dict[str, str]
    body: bytes
    sent_at: str
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""
    answered_at: str | None = None


@dataclass
class Recording:
    exchanges: list[Exchange] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)


def start() -> Recording:
    """Record the rest of this context's calls (the caller keeps the returned Recording)."""
    recording = Recording()
    _CURRENT.set(recording)
    return recording


def note(name: str, value: Any) -> None:
    """Keep a property of the request being recorded (nothing happens when none is)."""
    recording = _CURRENT.get()
    if recording is not None and value is not None:
        recording.properties[name] = str(value)


async def _on_request(request: httpx.Request) -> None:
    recording = _CURRENT.get()
    if recording is None:
        return
    try:
        body = request.content
    except httpx.RequestNotRead:  # a streamed body: not kept
        body = b""
    exchange = Exchange(request.method, request.url, dict(request.headers), body, now_iso())
    recording.exchanges.append(exchange)
    request.extensions[_EXCHANGE_KEY] = exchange


async def _on_response(response: httpx.Response) -> None:
    exchange = response.request.extensions.get(_EXCHANGE_KEY)
    if not isinstance(exchange, Exchange):
        return
    await response.aread()
    exchange.status = response.status_code
    exchange.response_headers = dict(response.headers)
    exchange.response_body = response.content
    exchange.answered_at = now_iso()


def install(client: httpx.AsyncClient) -> None:
    """Feed recordings from ``client``'s calls (once per client; repeating it changes nothing)."""
    hooks = client.event_hooks
    if _on_request not in hooks["request"]:
        hooks["request"] = [*hooks["request"], _on_request]
        hooks["response"] = [*hooks["response"], _on_response]
    client.event_hooks = hooks
