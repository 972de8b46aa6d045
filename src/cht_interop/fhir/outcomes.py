"""The store's small value types: a stored version, what a write or a delete did, and the helpers
that shape them for an answer (an informational OperationOutcome, an ``If-Match`` version).

They sit in a module of their own, depending on nothing but the error and date types, so every layer (the
write session, reads, bundles, Subscription matching, the HTTP routes) can name them without
importing the store, and the store can import all of those without an import cycle.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from cht_interop.fhir.datetimes import format_instant, now_us
from cht_interop.fhir.errors import InvalidRequest

Resource = dict[str, Any]


def new_bundle(kind: str) -> Resource:
    """A Bundle the server makes (searchset, history, batch/transaction-response): a fresh id and
    ``meta.lastUpdated`` now; the caller adds ``total``, ``link`` and ``entry`` in that order."""
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": format_instant(now_us())},
        "type": kind,
    }


@dataclass(slots=True)
class Stored:
    """One version of a resource as the store keeps it."""

    resource_type: str
    id: str
    version_id: int
    last_updated: int  # µs
    deleted: bool
    resource: Resource | None

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def location(self) -> str:
        return f"{self.resource_type}/{self.id}/_history/{self.version_id}"


@dataclass(slots=True)
class WriteOutcome:
    """What a create/update did: ``created`` → 201; ``changed`` false for a no-op or a conditional hit."""

    stored: Stored
    created: bool
    changed: bool = True

    @property
    def status(self) -> int:
        return 201 if self.created else 200

    @property
    def resource(self) -> Resource:
        assert self.stored.resource is not None
        return self.stored.resource


@dataclass(slots=True)
class DeleteOutcome:
    """What a delete did: the message HAPI gives, and whether a resource was deleted."""

    message: str
    deleted: bool


def outcome_info(message: str) -> Resource:
    """An OperationOutcome with one informational issue (delete answers, Prefer: OperationOutcome)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": message}],
    }


def parse_etag(value: str) -> int:
    """The version number of an ``If-Match`` value (``W/"3"``, ``"3"`` or ``3``); 400 otherwise."""
    raw = value.strip()
    if raw.startswith("W/"):
        raw = raw[2:]
    raw = raw.strip('"')
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"Invalid version in If-Match: {value!r}") from None


__all__ = ["DeleteOutcome", "Resource", "Stored", "WriteOutcome", "outcome_info", "parse_etag"]
