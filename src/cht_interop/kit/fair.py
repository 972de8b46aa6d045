"""Long CPU work in one request must not starve the others: the one place that says how.

The server is one event loop. A 100,000-entry FHIR transaction used to hold it for its whole run
(parsing, validating and indexing every entry between two awaits): ``/health/live`` went
unanswered for over 5 s, which is when a Kubernetes liveness probe kills the pod mid-write. Two
devices, used by the code that loops over a big request's items (``fhir/bundles.py``,
``ltfu/intake.py``):

- :func:`off_loop`: a step that needs no database (validating a whole Bundle's resources) runs in
  a worker thread once it has ``OFF_LOOP_ITEMS`` items or more; the loop serves others meanwhile
  (the thread and the loop share the GIL, handed over every few milliseconds);
- :class:`Breather` (and :func:`paced`, its loop form): a loop over items that must stay on the
  event loop (they await the database, or sit between two awaits of a request's steps) yields to
  it once every ``BREATHE_SECONDS`` of held time. A 10,000-entry LTFU list's duplicate check,
  staging and answer were such loops: each held the loop 100-200 ms in one go (py-spy, 2026-12-07),
  and every other client's follow-up waited that long at one of its steps.

Small requests take neither path: a thread hop costs ~0.1 ms, more than a single follow-up's
validation.

And ``kit/gc.release``: a big request's objects freed off the loop, an item at a time.

And :func:`share_the_gil`: while a big request's validation runs in a worker thread, every other
request's step that waits on a thread (each statement goes to aiosqlite's thread and back) waits
for the GIL too, up to the interpreter's switch interval each time (5 ms by default): a follow-up's
~9 statements took ~100 ms instead of ~3 ms. ``serve`` and ``up`` hand the GIL over every
``GIL_SWITCH_SECONDS`` instead.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar

import anyio.to_thread

T = TypeVar("T")

OFF_LOOP_ITEMS = 100  # ~15 ms of validation: less runs inline
# the longest a big request holds the loop between two yields; every other request's step waits for
# one (a follow-up has ~20): at 5 ms, follow-ups' p99 was 550-830 ms during back-to-back 2,000-entry
# transactions, at 2 ms 290-360 ms, the same CPU per entry (the shared box, load 5-7)
BREATHE_SECONDS = 0.002
GIL_SWITCH_SECONDS = 0.0005  # the longest a thread keeps the GIL from another that waits for it


def share_the_gil() -> None:
    """Hand the GIL to a waiting thread every ``GIL_SWITCH_SECONDS`` (a process-wide setting)."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)


async def off_loop(function: Callable[[], T], *, items: int) -> T:
    """``function()``, in a worker thread when it works through ``items`` >= ``OFF_LOOP_ITEMS``."""
    if items < OFF_LOOP_ITEMS:
        return function()
    return await in_thread(function)


async def in_thread(function: Callable[[], T]) -> T:
    """``function()`` in a worker thread, whatever its size: background work no request waits
    for (the journal's rows), which would otherwise take its turns on the loop beside theirs."""
    return await anyio.to_thread.run_sync(function)


class Breather:
    """Call :meth:`breathe` once per item of a long loop: it yields to the event loop when the
    loop has been held ``BREATHE_SECONDS`` since the last yield (a clock read otherwise, ~50 ns)."""

    def __init__(self, every: float = BREATHE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self.last = clock()

    async def breathe(self) -> None:
        now = self.clock()
        if now - self.last >= self.every:
            await asyncio.sleep(0)
            self.last = self.clock()


async def paced(items: Iterable[T]) -> AsyncIterator[T]:
    """``items``, one by one, yielding to the event loop every ``BREATHE_SECONDS`` of held time
    (a :class:`Breather` for ``async for``)."""
    breather = Breather(every=BREATHE_SECONDS)
    for item in items:
        yield item
        await breather.breathe()
