"""How many requests this process has open at the CHT at once: an AIMD window under a fixed cap.

The CHT is the slow party in production, so the mediator must not be the limit, nor flood it.
Every CHT call (``ChtClient.request``) takes a slot of the window; at most
``CHT_MAX_CONCURRENT_REQUESTS`` are open. When the CHT refuses for load (429, 503), the window is
halved and, if it said ``Retry-After``, no new call starts until then: every submission slows
down, not only the refused one (which the outbox retries). Each success widens the window again by
one slot per window's worth of successes (additive increase), back to the cap.

The outbox worker reads ``in_flight_allowance`` to stop claiming CHT jobs while the window is
full, so jobs wait in the database (where no lease runs out), not in this process. When a call
carries a batch of records, each slot of the window is worth several jobs (``RECORDS_HELD_PER_SLOT``).

``SlotBatches`` groups the items of concurrent callers (the records of the submissions running
together) into one request per slot: each slot carries up to a batch of items, so the CHT sees one
``_bulk_docs`` call where it saw dozens of ``PUT``s, and a refusal is one congestion event.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC
from http import HTTPStatus
from typing import Generic, TypeVar

from cht_interop.kit.coalescer import Batches

K = TypeVar("K")
V = TypeVar("V")

#: the CHT's answers that mean "too much load": slow down for everyone
OVERLOAD_STATUSES = frozenset({HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE})
#: jobs a worker holds per slot of the window when a call carries a batch of records: enough for
#: every stage of the submissions running together to work on big groups (a 3,000-entry list on
#: SQLite: 32 jobs held ~3.9 ms of worker CPU per record, 64 ~2.6 ms, 128 ~2.1 ms, 256 ~1.9 ms),
#: not so many that a killed worker leaves thousands of jobs waiting for their lease
RECORDS_HELD_PER_SLOT = 16
#: a Retry-After beyond this is not believed (a misconfigured proxy must not stall us for hours);
#: the outbox backoff still spaces the retries
MAX_RETRY_AFTER_SECONDS = 300.0


def retry_after_seconds(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - now()), MAX_RETRY_AFTER_SECONDS)


class ChtPacer:
    """The window of concurrent CHT calls (see the module docstring). One per CHT per process."""

    def __init__(
        self, max_concurrent: int, *, batch_size: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cap = max(1, max_concurrent)
        # jobs held per slot: the one in the call and one waiting, or as many as a batch needs
        self._held_per_slot = min(2 * max(1, batch_size), max(2, RECORDS_HELD_PER_SLOT))
        self._window = float(self.cap)
        self._open = 0
        self._paused_until = 0.0
        self._clock = clock
        self._changed = asyncio.Condition()
        self.refusals = 0  # overload answers seen (for logs and tests)
        # bumped at each decrease: the refusals of calls started before it are the same congestion
        # event, so a burst of refused calls halves the window once, not once per call
        self._epoch = 0

    @property
    def window(self) -> int:
        """Calls allowed open now (at least one)."""
        return max(1, int(self._window))

    @property
    def open(self) -> int:
        return self._open

    def in_flight_allowance(self) -> int:
        """How many jobs that call the CHT a worker may hold: per slot of the window, the job in
        the call and one waiting (the lookups and writes around a call keep the CHT busy while
        they run), or, when calls carry batches (``batch_size``), enough to fill them."""
        return self._held_per_slot * self.window

    def paused_for(self) -> float:
        """Seconds until new calls may start again (0: not paused)."""
        return max(0.0, self._paused_until - self._clock())

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        """Hold one of the window's slots for one call (waits while the window is full or paused);
        yields the ticket to hand back to :meth:`refused`."""
        async with self._changed:
            while True:
                pause = self.paused_for()
                if pause <= 0 and self._open < self.window:
                    break
                # a pause ends by time, not by a notification: wake up when it is over
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), pause if pause > 0 else None)
            self._open += 1
        try:
            yield self._epoch
        finally:
            async with self._changed:
                self._open -= 1
                self._changed.notify_all()

    def succeeded(self) -> None:
        """Additive increase: one more slot after a window's worth of successes."""
        if self._window < self.cap:
            self._window = min(float(self.cap), self._window + 1.0 / self._window)

    def refused(self, ticket: int, retry_after: float | None) -> None:
        """Multiplicative decrease (once per congestion event), and a pause for everyone when the
        CHT said how long."""
        self.refusals += 1
        if ticket == self._epoch:
            self._epoch += 1
            self._window = max(1.0, self._window / 2)
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, self._clock() + retry_after)


class SlotBatches(Generic[K, V]):
    """``await batches(item)`` → the result ``send`` gave for that item, sent with the items of
    the other callers waiting at the same time: one request per slot of ``pacer``, up to ``size``
    items each, oldest first (``kit/coalescer.py``'s :class:`Batches`, a slot for its turn).

    While the window is full the items pile up, so the busier the CHT, the fuller its requests. A
    slot free at once would send the first caller of a wave alone: the one holding it first lets
    the callers woken with it join. ``send(items, ticket)`` answers one result per item, in order
    (an exception instance: that item's own failure); if it raises, every item of the request
    fails with that error.
    """

    def __init__(
        self,
        pacer: ChtPacer,
        send: Callable[[list[K], int], Awaitable[Sequence[V | Exception]]],
        size: int,
    ) -> None:
        self._batches: Batches[K, int, V | Exception] = Batches(send, pacer.slot, size=size, join_woken=True)

    async def __call__(self, item: K) -> V:
        result = await self._batches(item)
        if isinstance(result, Exception):
            raise result
        return result
