"""What a domain hands the outbox. Kept dependency-free so every domain can import it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class NewJob:
    """A unit of outbound work, written in the same transaction as the change that causes it.

    ``kind`` picks the handler (e.g. ``"fhir.subscription-notification"``, ``"cht.record"``);
    ``target`` is a human-readable destination (URL or peer name) for the console and logs;
    ``ordering_key`` makes jobs with the same key run strictly one after another, oldest first
    (per Subscription for notifications); ``payload`` is JSON the handler understands; ``due``
    (aware) delays the first try, and the retry horizon counts from it (expiries), so a job due
    later can ride in the very transaction that causes it.
    """

    kind: str
    target: str
    payload: dict[str, Any] = field(default_factory=dict)
    ordering_key: str | None = None
    due: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """What a handler may return on success, recorded with the attempt (never headers or secrets)."""

    http_status: int | None = None
    note: str | None = None


class DeliveryError(Exception):
    """Base of the handler-raised failures; ``http_status`` is recorded with the attempt."""

    def __init__(
        self, message: str, *, http_status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        # the peer's Retry-After (seconds): the next try waits at least this long
        self.retry_after = retry_after


class TransientDeliveryError(DeliveryError):
    """The peer may accept later: retry with backoff until the horizon."""


class PermanentDeliveryError(DeliveryError):
    """The peer will never accept this: dead-letter at once (handler's ``on_dead`` runs)."""
