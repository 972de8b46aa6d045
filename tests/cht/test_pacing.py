"""The CHT pacer: a bounded window of concurrent calls that narrows on 429/503 and widens back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from cht_interop.cht.pacing import MAX_RETRY_AFTER_SECONDS, ChtPacer, retry_after_seconds


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    in_a_minute = format_datetime(now + timedelta(seconds=60), usegmt=True)
    assert retry_after_seconds(in_a_minute, now=now.timestamp) == 60.0
    assert retry_after_seconds(format_datetime(now - timedelta(days=1), usegmt=True), now=now.timestamp) == 0
    assert retry_after_seconds("86400") == MAX_RETRY_AFTER_SECONDS  # not believed beyond the cap
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None


async def test_no_more_calls_open_than_the_window() -> None:
    pacer = ChtPacer(4)
    open_now = peak = 0

    async def call() -> None:
        nonlocal open_now, peak
        async with pacer.slot():
            open_now += 1
            peak = max(peak, open_now)
            await asyncio.sleep(0)  # let the others try to get in
            await asyncio.sleep(0)
            open_now -= 1
        pacer.succeeded()

    await asyncio.gather(*(call() for _ in range(40)))
    assert peak == 4 and pacer.open == 0


async def test_refusals_halve_the_window_once_per_burst_and_successes_widen_it_back() -> None:
    pacer = ChtPacer(16)
    async with pacer.slot() as first, pacer.slot() as second:
        pacer.refused(first, None)
        pacer.refused(second, None)  # the same burst: started before the first decrease
    assert pacer.window == 8 and pacer.in_flight_allowance() == 16 and pacer.refusals == 2
    async with pacer.slot() as third:
        pacer.refused(third, None)  # a call started after it: a new refusal, halve again
    assert pacer.window == 4
    for _ in range(3):
        async with pacer.slot() as ticket:
            pacer.refused(ticket, None)
    assert pacer.window == 1  # never below one call
    successes = 0
    while pacer.window < 16:
        pacer.succeeded()
        successes += 1
    assert 100 <= successes <= 130  # additive: about one slot per window's worth of successes
    pacer.succeeded()
    assert pacer.window == 16  # never above the cap


async def test_retry_after_pauses_every_new_call_until_it_has_passed() -> None:
    now = [100.0]
    pacer = ChtPacer(8, clock=lambda: now[0])
    async with pacer.slot() as ticket:
        pacer.refused(ticket, 30)
    assert pacer.paused_for() == 30
    waiting = asyncio.create_task(_enter(pacer))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()  # paused: the call waits
    now[0] += 30
    async with pacer.slot():  # wakes the waiter's condition when it leaves
        pass
    assert pacer.paused_for() == 0
    await asyncio.wait_for(waiting, 5)


async def _enter(pacer: ChtPacer) -> None:
    async with pacer.slot():
        pass
