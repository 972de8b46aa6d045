"""Coalescer: concurrent calls served together, each getting its own result or the batch's error."""

from __future__ import annotations

import asyncio

import pytest

from cht_interop.kit.coalescer import BatchAbandoned, Batches, Coalescer


async def test_calls_waiting_for_a_running_batch_are_served_by_one_next_batch() -> None:
    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            await gate.wait()
        return [i * 10 for i in items]

    square = Coalescer(run)
    first = asyncio.create_task(square(1))
    await asyncio.sleep(0)  # the first call is running its batch
    others = [asyncio.create_task(square(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == 10
    assert [await t for t in others] == [20, 30, 40]
    assert batches == [[1], [2, 3, 4]]


async def test_a_failing_batch_fails_every_call_in_it() -> None:
    async def run(items: list[int]) -> list[int]:
        await asyncio.sleep(0)
        raise ValueError("store refused")

    c = Coalescer(run)
    results = await asyncio.gather(*(c(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)


async def test_a_cancelled_leader_leaves_the_others_a_clear_error() -> None:
    started = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        started.set()
        await asyncio.sleep(3600)
        return items

    c = Coalescer(run)
    holder = asyncio.create_task(c(0))
    await started.wait()
    waiting = asyncio.create_task(c(1))
    await asyncio.sleep(0)
    started.clear()
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    # the waiting call leads the next batch itself
    await started.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_others_in_a_cancelled_batch_get_batch_abandoned() -> None:
    started = asyncio.Event()
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        started.set()
        await asyncio.sleep(3600)
        return items

    c = Coalescer(run)
    blocker = asyncio.create_task(c(0))
    await started.wait()
    second, third = asyncio.create_task(c(1)), asyncio.create_task(c(2))
    await asyncio.sleep(0)
    started.clear()
    blocker.cancel()  # second leads the next batch with [1, 2]
    await started.wait()
    assert calls[-1] == [1, 2]
    second.cancel()
    with pytest.raises(BatchAbandoned):
        await third


class Recorder:
    """A batch runner that records its batches and takes a moment, as a store write would."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await asyncio.sleep(0.005)
        return items


async def arrive_later(c: Coalescer[int, int], item: int, after: float) -> int:
    await asyncio.sleep(after)
    return await c(item)


async def test_under_load_a_new_leader_lingers_for_the_requests_on_their_way() -> None:
    """After a batch with company, the next leader waits ``linger`` for calls arriving just after it."""
    for linger, expected in ((0.0, [[1], [2, 3], [4], [5]]), (0.05, [[1], [2, 3], [4, 5]])):
        run = Recorder()
        c: Coalescer[int, int] = Coalescer(run, linger=linger)
        assert list(await asyncio.gather(c(1), c(2), c(3))) == [1, 2, 3]  # 2 and 3 share a batch: load
        # 4 arrives now, 5 a moment later: with a linger they share a batch
        assert list(await asyncio.gather(c(4), arrive_later(c, 5, 0.02))) == [4, 5]
        assert run.batches == expected, linger


async def test_a_lone_call_without_load_does_not_linger() -> None:
    c: Coalescer[int, int] = Coalescer(Recorder(), linger=5.0)
    started = asyncio.get_running_loop().time()
    assert await c(1) == 1
    assert await c(2) == 2  # the previous batch was alone: no waiting
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_lingering_stops_once_the_last_wave_is_back() -> None:
    run = Recorder()
    c: Coalescer[int, int] = Coalescer(run, linger=5.0)
    assert list(await asyncio.gather(c(1), c(2), c(3))) == [1, 2, 3]  # last batch: [2, 3]
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert list(await asyncio.gather(c(4), arrive_later(c, 5, 0.02))) == [4, 5]
    assert run.batches == [[1], [2, 3], [4, 5]]
    assert loop.time() - started < 1.0  # two back, as many as last time: no waiting out the 5 s


async def test_a_finished_batch_releases_its_callers_together_to_the_next_stage() -> None:
    """Callers served by one batch reach the next coalescing stage as one group, not by twos."""
    first_stage, second_stage = Recorder(), []

    async def quick(items: list[int]) -> list[int]:
        second_stage.append(items)
        await asyncio.sleep(0)
        return items

    a: Coalescer[int, int] = Coalescer(first_stage)
    b: Coalescer[int, int] = Coalescer(quick)

    async def both(item: int) -> int:
        return await b(await a(item))

    assert list(await asyncio.gather(*(both(i) for i in range(60)))) == list(range(60))
    assert [len(batch) for batch in first_stage.batches] == [1, 59]
    assert len(second_stage) <= 3, [len(batch) for batch in second_stage]


async def test_a_leader_cancelled_while_another_holds_the_lock_does_not_stall_the_rest() -> None:
    lock = asyncio.Lock()
    run = Recorder()
    c: Coalescer[int, int] = Coalescer(run, lock=lock)
    await lock.acquire()  # another user of the shared lock
    leader = asyncio.create_task(c(1))
    await asyncio.sleep(0)
    follower = asyncio.create_task(c(2))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    lock.release()
    assert await asyncio.wait_for(follower, 5) == 2
    assert run.batches == [[2]]  # the cancelled leader's item was left out, not run for nobody


async def test_batches_run_as_many_at_once_as_their_turn_allows_each_up_to_its_size() -> None:
    """One batch per turn (here: two turns, as a window of two CHT slots), the oldest items first."""
    turns = asyncio.Semaphore(2)
    running = peak = 0
    batches: list[list[int]] = []

    async def run(items: list[int], _turn: None) -> list[int]:
        nonlocal running, peak
        batches.append(items)
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        running -= 1
        return [-i for i in items]

    b: Batches[int, None, int] = Batches(run, lambda: turns, size=4, join_woken=True)
    assert list(await asyncio.gather(*(b(i) for i in range(10)))) == [-i for i in range(10)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and peak == 2
