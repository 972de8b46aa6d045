"""Job handlers by kind. Each domain registers its own at start-up (``register_handlers``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cht_interop.delivery.jobs import DeliveryReceipt


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed outbox job as a handler sees it."""

    id: int
    kind: str
    target: str
    payload: dict[str, Any]
    ordering_key: str | None
    attempts: int  # attempts made before this one
    created_at: datetime
    # stable for the job's life (every retry): receivers drop duplicates by it (X-Notification-Id)
    notification_id: str = ""


# A handler performs the delivery. It returns normally on success, raises
# TransientDeliveryError to be retried, PermanentDeliveryError to dead-letter at once.
# Any other exception counts as transient. It may return a short text (or a DeliveryReceipt with
# the peer's HTTP status) recorded with the attempt.
Handler = Callable[[Job], Awaitable[str | DeliveryReceipt | None]]
# Runs (in its own transaction, after the job is marked dead) so the domain can record the failure:
# e.g. Subscription -> status "error", follow-up Task -> "failed". At least once: the job is made
# dead with its hook pending and the hook marked done after it returned, so a hook that raised or
# whose process stopped runs again (another worker, later). It must be safe to run twice.
DeadLetterHook = Callable[[Job, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Registration:
    handler: Handler
    on_dead: DeadLetterHook | None = None


# How many jobs of a kind one worker may run at once, asked before each claim (it may change: the
# CHT's pacing window narrows under load). Jobs beyond it stay pending in the database.
InFlightLimit = Callable[[], int]


class HandlerRegistry:
    """Maps a job kind to its handler; a job of an unknown kind is never claimed."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Registration] = {}
        self._limits: dict[str, InFlightLimit] = {}

    def register(self, kind: str, handler: Handler, *, on_dead: DeadLetterHook | None = None) -> None:
        if kind in self._by_kind:
            raise ValueError(f"a handler for job kind {kind!r} is already registered")
        self._by_kind[kind] = Registration(handler, on_dead)

    def limit_in_flight(self, kind: str, limit: InFlightLimit) -> None:
        """Cap the jobs of ``kind`` a worker holds at once (a slow peer must not take every slot
        from the other kinds, nor hold claimed jobs whose leases run out while they wait)."""
        self._limits[kind] = limit

    def in_flight_limit(self, kind: str) -> int | None:
        limit = self._limits.get(kind)
        return None if limit is None else max(1, limit())

    def get(self, kind: str) -> Registration | None:
        return self._by_kind.get(kind)

    @property
    def kinds(self) -> list[str]:
        return sorted(self._by_kind)
