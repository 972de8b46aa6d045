"""What one inbound request did on the way: its outbound HTTP calls and the properties it names.

Domain-free and off by default. Whoever answers a request may call ``start()``; from then on, in
that request's context (a ``contextvars`` value, so background tasks started elsewhere are never
counted), every call on an ``httpx.AsyncClient`` given ``install(client)`` is kept as an
``Exchange``, and ``note(name, value)`` keeps a property (a follow-up id, a Task status). Outside a
recording both are no-ops costing one context-variable read.

A call that never leaves the process (the embedded FHIR store) is recorded the same way by whoever
makes it, through ``begin_local`` / ``answer_local``: an administrator sees what the request did to
the store as an orchestration, marked as local, as if the store were a peer.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import httpx

from cht_interop.kit.redaction import clip, redact, redact_headers

_CURRENT: contextvars.ContextVar[Recording | None] = contextvars.ContextVar("exchanges", default=None)
_EXCHANGE_KEY = "cht_interop.exchange"
_SCOPE_KEY = "cht_interop.recording"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class LocalURL:
    """Where an in-process call would have gone (``begin_local``): what the orchestration and the
    journal read of a URL, kept as the caller built it. ``httpx.URL`` parsed and quoted again a
    path and query string already quoted (``urlencode``), for each of the four or so store calls
    of every single follow-up. The query is kept as it is shown (``querystring``: not quoted, so
    never unquoted either): quoting a long list's 400-id searches, then unquoting them for the
    journal, was ~1 ms of the event loop per search (~75 of them for 10,000 entries)."""

    path: str
    querystring: str = ""
    scheme: str = "http"
    host: str = "in-process"
    port: int | None = None


@dataclass
class Exchange:
    """One outbound HTTP call: the request as sent, and the response (None if none came)."""

    method: str
    url: httpx.URL | LocalURL
    headers: dict[str, str]
    body: bytes
    sent_at: str
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""
    answered_at: str | None = None
    local: str | None = None  # the in-process peer's name (no network call was made)
    # a long local body is kept already redacted and cut (``LOCAL_MAX_BODY``): these are the whole
    # redacted bodies' lengths in characters, for the cut's note (None: the body is kept whole)
    body_chars: int | None = None
    response_body_chars: int | None = None


@dataclass
class Recording:
    exchanges: list[Exchange] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    transaction_id: str | None = None


def start(transaction_id: str | None = None) -> Recording:
    """Record the rest of this context's calls (the caller keeps the returned Recording)."""
    recording = Recording(transaction_id=transaction_id)
    _CURRENT.set(recording)
    return recording


def current() -> Recording | None:
    """The recording of this context, if someone started one (a job's wrapper)."""
    return _CURRENT.get()


def attach(scope: MutableMapping[str, Any], recording: Recording) -> None:
    """Hand a request's recording to the middlewares inside (by its ASGI scope, not the context:
    a context may outlive a request, e.g. several requests in one task)."""
    scope[_SCOPE_KEY] = recording


def attached(scope: Mapping[str, Any]) -> Recording | None:
    found = scope.get(_SCOPE_KEY)
    return found if isinstance(found, Recording) else None


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


def begin_outbound(method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> Exchange | None:
    """Record a call made by a client other than an installed httpx one (``kit/pooled_http.py``):
    the headers as sent, names lower-cased and repeats joined as httpx shows them. None when
    nothing is being recorded."""
    recording = _CURRENT.get()
    if recording is None:
        return None
    parsed = httpx.URL(url)
    shown: dict[str, str] = {"host": parsed.netloc.decode("ascii", "replace")}
    for name, value in headers:
        key = name.lower()
        shown[key] = f"{shown[key]}, {value}" if key in shown else value
    shown.setdefault("content-length", str(len(body)))
    exchange = Exchange(method, parsed, shown, body, now_iso())
    recording.exchanges.append(exchange)
    return exchange


def answer(exchange: Exchange, status: int, headers: dict[str, str], body: bytes) -> None:
    """The reply to a call recorded with ``begin_outbound``."""
    exchange.status = status
    exchange.response_headers = headers
    exchange.response_body = body
    exchange.answered_at = now_iso()


# a local call's bodies (a whole list's transaction Bundle) are cut to this in every orchestration
# unless the caller cuts shorter: OpenHIM keeps at most 15 MiB of bodies per transaction.
# They are redacted and cut when recorded, not when shown: a recording lives until the journal's
# writer has written its row, and whole bodies (a list's patient searches, ~7.7 MiB; a staged
# chunk's Bundle and its answer, ~2 MiB per chunk) stayed resident meanwhile, in the hundreds of
# KiB blocks glibc keeps: ``up --cht-sandbox``'s peak writing 10,000-entry lists (docs/performance.md).
LOCAL_MAX_BODY = 16 * 1024


def begin_local(
    peer: str,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Exchange | None:
    """Record a call to ``peer`` made inside this process (None when nothing is being recorded:
    the caller then skips the answer's serialisation too)."""
    recording = _CURRENT.get()
    if recording is None:
        return None
    url = LocalURL(path, "&".join(f"{name}={value}" for name, value in query))
    kept, chars = _kept(body)
    exchange = Exchange(method, url, dict(headers or {}), kept, now_iso(), local=peer, body_chars=chars)
    recording.exchanges.append(exchange)
    return exchange


def answer_local(exchange: Exchange, status: int, body: bytes = b"") -> None:
    exchange.status = status
    exchange.response_body, exchange.response_body_chars = _kept(body)
    exchange.answered_at = now_iso()


def _kept(body: bytes) -> tuple[bytes, int | None]:
    """What of a local call's body is kept: a short one whole (redacted when shown, if ever), a
    longer one's first ``LOCAL_MAX_BODY`` characters once redacted (redaction reads the whole body:
    a cut one may no longer parse) with the redacted length."""
    if len(body) <= LOCAL_MAX_BODY:
        return body, None
    text = redact(body)
    return text[:LOCAL_MAX_BODY].encode(), len(text)


def install(client: httpx.AsyncClient) -> None:
    """Feed recordings from ``client``'s calls (once per client; repeating it changes nothing)."""
    hooks = client.event_hooks
    if _on_request not in hooks["request"]:
        hooks["request"] = [*hooks["request"], _on_request]
        hooks["response"] = [*hooks["response"], _on_response]
    client.event_hooks = hooks


def orchestration(exchange: Exchange, *, max_body: int | None = None) -> dict[str, Any]:
    """An exchange as OpenHIM shows an orchestration (reference §1.7), credentials removed;
    bodies cut to ``max_body`` characters when given (None: whole), or left out with 0."""
    url = exchange.url
    port = url.port or (443 if url.scheme == "https" else 80)
    host = url.host
    name = f"{exchange.method} {url.host}{url.path}"
    if exchange.local is not None:  # no network: the peer's name, no port
        host, port, name = exchange.local, 0, f"{exchange.method} {url.path} ({exchange.local})"
        max_body = LOCAL_MAX_BODY if max_body is None else min(max_body, LOCAL_MAX_BODY)
    entry: dict[str, Any] = {
        "name": name,
        "request": {
            "host": host,
            "port": str(port) if port else "",
            "path": url.path,
            "querystring": (
                url.querystring
                if isinstance(url, LocalURL)
                else unquote(url.query.decode("ascii", errors="replace"))
            ),
            "method": exchange.method,
            "headers": redact_headers(exchange.headers),
            "body": _body(exchange.body, max_body, exchange.body_chars),
            "timestamp": exchange.sent_at,
        },
    }
    if exchange.status is None:
        entry["error"] = {"message": "no response: the call failed or timed out", "stack": ""}
    else:
        entry["response"] = {
            "status": exchange.status,
            "headers": redact_headers(exchange.response_headers),
            "body": _body(exchange.response_body, max_body, exchange.response_body_chars),
            "timestamp": exchange.answered_at,
        }
    return entry


def _body(body: bytes, max_body: int | None, chars: int | None) -> str:
    if max_body == 0:
        return ""
    if chars is None:  # kept whole: redacted now
        return clip(redact(body), max_body)
    # kept redacted and cut (``_kept``): the same text as the whole body redacted then cut
    limit = LOCAL_MAX_BODY if max_body is None else min(max_body, LOCAL_MAX_BODY)
    return clip(body.decode(), limit, whole=chars)


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
