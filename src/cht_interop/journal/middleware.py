"""Every request to the recorded prefixes gets a transaction id and a journal row.

The id is OpenHIM core's ``X-OpenHIM-TransactionID`` when core routed the request, a new UUID
otherwise; it is answered in ``X-Transaction-Id`` and bound to the log context (``transaction_id``
on every log line the request causes). The row is queued after the answer has been sent
(``JournalWriter.submit``, constant time); the outbound calls are the same recording the OpenHIM
answer carries (``kit.exchanges``). Bodies are kept only while ``JOURNAL_BODIES`` is on, and only
up to ``CAPTURE_MAX_BYTES`` (redaction needs the whole body; a longer one is noted by its size).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cht_interop.journal.entries import RequestDone
from cht_interop.journal.writer import JournalWriter
from cht_interop.kit import exchanges
from cht_interop.kit.guard import CRASH_KEY, UNANSWERED_STATUS_KEY

OPENHIM_TRANSACTION = b"x-openhim-transactionid"
TRANSACTION_HEADER = b"x-transaction-id"
CAPTURE_MAX_BYTES = 1024 * 1024


class _Capture:
    """Body chunks up to the capture limit; past it, only the size."""

    __slots__ = ("chunks", "keep", "size")

    def __init__(self, keep: bool) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.keep = keep

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.keep and self.size <= CAPTURE_MAX_BYTES:
            self.chunks.append(chunk)

    def body(self) -> bytes | None:
        if not self.keep:
            return None
        if self.size > CAPTURE_MAX_BYTES:
            return f"[a body of {self.size} bytes, not kept]".encode()
        return b"".join(self.chunks)


class TransactionJournal:
    """ASGI middleware: records the requests under ``prefixes`` in ``writer_of(scope)``'s journal.

    ``writer_of`` finds the process's writer at request time (it is built by the lifespan, after
    the middleware stack)."""

    def __init__(self, app: ASGIApp, *, prefixes: tuple[str, ...], writer_of: Any) -> None:
        self.app = app
        self.prefixes = prefixes
        self.writer_of = writer_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._recorded(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        writer: JournalWriter | None = self.writer_of(scope)
        recording = exchanges.attached(scope)
        if recording is None or recording.transaction_id is None:
            transaction_id = _header(scope, OPENHIM_TRANSACTION) or str(uuid.uuid4())
            recording = exchanges.start(transaction_id)
            exchanges.attach(scope, recording)
        transaction_id = recording.transaction_id or ""
        keep = writer is not None and writer.enabled and writer.bodies.keep
        request_body, response_body = _Capture(keep), _Capture(keep)
        status = 500

        async def receive_kept() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                request_body.add(message.get("body", b""))
            return message

        async def send_kept(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [
                    *message.get("headers", []),
                    (TRANSACTION_HEADER, transaction_id.encode("latin-1")),
                ]
            elif message["type"] == "http.response.body":
                response_body.add(message.get("body", b""))
            await send(message)

        started = datetime.now(UTC)
        clock = time.perf_counter()
        error: str | None = None
        try:
            with structlog.contextvars.bound_contextvars(transaction_id=transaction_id):
                await self.app(scope, receive_kept if keep else receive, send_kept)
        except Exception as exc:
            status, error = 500, f"{type(exc).__name__}: {exc}"[:2000]
            raise
        finally:
            crash = scope.get(CRASH_KEY)  # answered by the guard inside (500; 503 for a busy database)
            if error is None and isinstance(crash, str):
                error = crash[:2000]
            status = scope.get(UNANSWERED_STATUS_KEY, status)  # 499: the client left before its answer
            if writer is not None:
                writer.submit(
                    RequestDone(
                        transaction_id=transaction_id,
                        started_at=started,
                        duration_ms=(time.perf_counter() - clock) * 1000,
                        client=_client(scope),
                        method=scope["method"],
                        path=scope["path"],
                        query=scope.get("query_string", b"").decode("latin-1"),
                        status=status,
                        request_body=request_body.body(),
                        response_body=response_body.body(),
                        exchanges=list(recording.exchanges),
                        properties=dict(recording.properties),
                        error=error,
                    )
                )

    def _recorded(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.prefixes)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            text = value.decode("latin-1").strip()
            return text[:64] or None
    return None


def _client(scope: Scope) -> str | None:
    """Who the gateway found the client to be (``request.state``), if it got that far."""
    state = scope.get("state") or {}
    principal = state.get("principal")
    client_id = getattr(principal, "client_id", None) or state.get("client_id")
    return str(client_id) if client_id else None
