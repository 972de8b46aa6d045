"""The CHT pacer: a bounded window of concurrent calls that narrows on 429/503 and widens back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from cht_interop.cht.pacing import MAX_RETRY_AFTER_SECONDS, ChtPacer, SlotBatches, retry_after_seconds
from cht_interop.kit.coalescer import Coalescer


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


class Cht:
    """A ``send`` for SlotBatches that notes its requests and how many were open at once."""

    def __init__(self, pacer: ChtPacer, latency: float = 0.001) -> None:
        self.pacer = pacer
        self.latency = latency
        self.requests: list[list[int]] = []
        self.peak = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self._sent = asyncio.Event()

    async def sent(self, n: int) -> None:
        """Until ``n`` requests have been sent."""
        while len(self.requests) < n:
            self._sent.clear()
            await self._sent.wait()

    async def __call__(self, items: list[int], ticket: int) -> list[int | Exception]:
        self.requests.append(items)
        self._sent.set()
        self.peak = max(self.peak, self.pacer.open)
        await self.gate.wait()
        await asyncio.sleep(self.latency)  # the CHT's own time
        return [ValueError(f"refused {i}") if i == 13 else i * 10 for i in items]


async def test_concurrent_callers_go_out_in_few_requests_each_getting_its_own_answer() -> None:
    pacer = ChtPacer(4)
    cht = Cht(pacer)
    writes: SlotBatches[int, int] = SlotBatches(pacer, cht, 25)
    cht.gate.clear()  # the CHT answers once all three requests are out: they are open together

    calls = asyncio.gather(*(writes(i) for i in range(60)), return_exceptions=True)
    await cht.sent(3)
    cht.gate.set()
    results = await calls

    assert [r for i, r in enumerate(results) if i != 13] == [i * 10 for i in range(60) if i != 13]
    assert isinstance(results[13], ValueError)  # that item's own failure, not its request's
    assert [len(r) for r in cht.requests] == [25, 25, 10]  # oldest first, a request per slot
    assert cht.peak == 3


async def test_callers_pile_up_while_the_window_is_full_and_go_in_one_request_per_slot() -> None:
    pacer = ChtPacer(2)
    cht = Cht(pacer)
    writes: SlotBatches[int, int] = SlotBatches(pacer, cht, 100)
    cht.gate.clear()
    first = [asyncio.create_task(writes(i)) for i in range(3)]
    await cht.sent(1)
    second = [asyncio.create_task(writes(i)) for i in range(3, 6)]
    await cht.sent(2)
    later = [asyncio.create_task(writes(i)) for i in range(6, 13)]  # the window is full: they wait
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(cht.requests) == 2
    cht.gate.set()

    assert [await t for t in [*first, *second, *later]] == [i * 10 for i in range(13)]
    assert cht.requests == [[0, 1, 2], [3, 4, 5], list(range(6, 13))]


async def test_a_finished_request_releases_its_callers_together_to_the_next_stage() -> None:
    """Callers served by one request reach the next stage (a coalescer) as one group, not one by
    one (through the gatherer's lock they trickled out one per event-loop turn)."""
    pacer = ChtPacer(4)
    writes: SlotBatches[int, int] = SlotBatches(pacer, Cht(pacer, latency=0), 100)
    next_stage: list[list[int]] = []

    async def quick(items: list[int]) -> list[int]:
        next_stage.append(items)
        await asyncio.sleep(0)
        return items

    accept: Coalescer[int, int] = Coalescer(quick)

    async def both(item: int) -> int:
        return await accept(await writes(item))

    items = range(100, 160)
    assert list(await asyncio.gather(*(both(i) for i in items))) == [i * 10 for i in items]
    assert len(next_stage) <= 3, [len(batch) for batch in next_stage]


async def test_a_caller_cancelled_before_its_request_is_not_sent_and_the_rest_go_on() -> None:
    pacer = ChtPacer(1)
    cht = Cht(pacer)
    writes: SlotBatches[int, int] = SlotBatches(pacer, cht, 100)
    cht.gate.clear()
    holder = asyncio.create_task(writes(1))
    await cht.sent(1)
    leader, follower = asyncio.create_task(writes(2)), asyncio.create_task(writes(3))
    await asyncio.sleep(0)
    leader.cancel()  # waiting for the slot, to lead the next request
    with pytest.raises(asyncio.CancelledError):
        await leader
    cht.gate.set()
    assert await holder == 10
    assert await asyncio.wait_for(follower, 5) == 30
    assert cht.requests == [[1], [3]]
