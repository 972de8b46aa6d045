"""What a journal row holds, built from what a request or a job attempt did.

The request path only hands over raw materials (bytes, the recording); redaction, capping and
JSON shaping happen here, in the writer's background task, after the answer has left.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cht_interop.kit.exchanges import Exchange, orchestration, transaction_status
from cht_interop.kit.redaction import clip, redact, redact_text

# noted properties (kit.exchanges.note) → the reference they name (a follow-up's Task adds no link
# its follow-up id and Subscription do not already give: one index row fewer per request)
_PROPERTY_REFS = {
    "followUpId": "follow-up:",
    "serviceRequestId": "ServiceRequest/",
    "subscriptionId": "Subscription/",
    "listId": "list:",
}
# job payload keys → the reference they name (follow_ups: a list)
_PAYLOAD_REFS = {
    "follow_up": "follow-up:",
    "follow_ups": "follow-up:",
    "task_id": "Task/",
    "service_request_id": "ServiceRequest/",
    "subscription_id": "Subscription/",
    "list_id": "list:",
}
MAX_REF = 200


@dataclass(frozen=True, slots=True)
class BodyPolicy:
    """Whether bodies are kept (``JOURNAL_BODIES``) and how much of each (``JOURNAL_MAX_BODY_CHARS``)."""

    keep: bool
    max_chars: int

    def text(self, body: bytes | None) -> str | None:
        if not self.keep or body is None:
            return None
        return clip(redact(body), self.max_chars)

    def orchestrations(self, calls: list[Exchange]) -> list[dict[str, Any]]:
        return [orchestration(e, max_body=self.max_chars if self.keep else 0) for e in calls]


@dataclass(slots=True)
class RequestDone:
    """A request to /mediator or /fhir, as the middleware saw it."""

    transaction_id: str
    started_at: datetime
    duration_ms: float
    client: str | None
    method: str
    path: str
    query: str
    status: int
    request_body: bytes | None
    response_body: bytes | None
    exchanges: list[Exchange]
    properties: dict[str, str]
    error: str | None = None


@dataclass(slots=True)
class JobDone:
    """One attempt of an outbox job, as its handler's wrapper saw it."""

    transaction_id: str
    started_at: datetime
    duration_ms: float
    job_id: int
    kind: str
    target: str
    attempt: int
    payload: dict[str, Any]
    outcome: str  # done | failed | dead (the worker decides between retry and dead-letter)
    status: int | None
    note: str | None
    exchanges: list[Exchange]
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Row:
    """A row ready to insert, and its references."""

    values: dict[str, Any]
    refs: list[str]


def row_id() -> str:
    """A row id that sorts by creation time (microseconds, then 64 random bits): inserts land at
    the end of the primary key's B-tree instead of at random places in it."""
    return f"{time.time_ns() // 1000:014x}-{os.urandom(8).hex()}"


def request_row(done: RequestDone, bodies: BodyPolicy) -> Row:
    orchestrations = bodies.orchestrations(done.exchanges)
    refs = _refs(done.properties, _PROPERTY_REFS)
    values = {
        "id": row_id(),
        "transaction_id": done.transaction_id,
        "kind": "request",
        "started_at": done.started_at,
        "duration_ms": round(done.duration_ms, 3),
        "client": done.client,
        "method": done.method,
        "path": done.path,
        "query": redact(done.query.encode()) if done.query else None,
        "status": done.status,
        "outcome": transaction_status(done.status, orchestrations),
        "error": redact_text(done.error) if done.error else None,
        "request_body": bodies.text(done.request_body),
        "response_body": bodies.text(done.response_body),
        "properties": dict(done.properties),
        "orchestrations": orchestrations,
        "follow_up_id": done.properties.get("followUpId"),
        "job_id": None,
        "attempt": None,
        "target": None,
    }
    return Row(values, refs)


def job_row(done: JobDone, bodies: BodyPolicy) -> Row:
    refs = sorted(set(_refs(done.payload, _PAYLOAD_REFS)) | set(_refs(done.properties, _PROPERTY_REFS)))
    follow_up = done.payload.get("follow_up") or done.properties.get("followUpId")
    note = redact_text(done.note) if done.note else None
    values = {
        "id": row_id(),
        "transaction_id": done.transaction_id,
        "kind": "job",
        "started_at": done.started_at,
        "duration_ms": round(done.duration_ms, 3),
        "client": None,
        "method": None,
        "path": done.kind,
        "query": None,
        "status": done.status,
        "outcome": done.outcome,
        "error": note if done.outcome != "done" else None,
        "request_body": None,
        "response_body": note if done.outcome == "done" else None,
        "properties": dict(done.properties),
        "orchestrations": bodies.orchestrations(done.exchanges),
        "follow_up_id": str(follow_up) if follow_up else None,
        "job_id": done.job_id,
        "attempt": done.attempt,
        "target": done.target,
    }
    return Row(values, refs)


def _refs(source: dict[str, Any], names: dict[str, str]) -> list[str]:
    refs: list[str] = []
    for key, prefix in names.items():
        value = source.get(key)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and str(item):
                refs.append(f"{prefix}{item}"[:MAX_REF])
    return refs
