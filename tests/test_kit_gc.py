"""Memory freed by units of work goes back to the OS: one trim shortly after, however many units;
what a unit releases is freed off the event loop's thread, the collector paused until it is."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from cht_interop.kit import gc as kit_gc


async def test_bundles_ending_together_share_one_trim_then_a_later_one_gets_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    trimmed = asyncio.Event()
    trims: list[int] = []

    def fake_trim() -> None:  # runs in the executor, as malloc_trim does
        trims.append(1)
        loop.call_soon_threadsafe(trimmed.set)

    monkeypatch.setattr(kit_gc, "release_free_memory", fake_trim)
    monkeypatch.setattr(kit_gc, "TRIM_AFTER_SECONDS", 0.01)
    for entries in (1, 500, 500, 20):  # a bulk load's Bundles, none large, one after another
        async with kit_gc.gc_paused(entries >= kit_gc.GC_PAUSE_ENTRIES):
            pass
    await asyncio.wait_for(trimmed.wait(), 10)
    assert trims == [1]

    trimmed.clear()
    async with kit_gc.gc_paused(True):  # a large Bundle, later
        pass
    await asyncio.wait_for(trimmed.wait(), 10)
    assert trims == [1, 1]


async def test_start_up_pages_go_back_once_the_servers_have_started(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(kit_gc, "release_free_memory", lambda: trims.append(1))
    started = False
    waiting = asyncio.create_task(kit_gc.memory_returned_once(lambda: started))
    await asyncio.sleep(0.3)
    assert trims == []  # not while a server is still starting
    started = True
    await asyncio.wait_for(waiting, 10)
    assert trims == [1]


def test_release_empties_the_containers_and_frees_their_items_in_another_thread() -> None:
    """A big request's objects are freed off the event loop's thread; what something else still
    holds stays alive."""
    freed_in: list[int] = []

    class Item:
        def __del__(self) -> None:
            freed_in.append(threading.get_ident())

    kept = Item()
    items, by_key = [Item() for _ in range(50)], {n: Item() for n in range(50)}
    items.append(kept)

    done = kit_gc.release(items, by_key)

    assert items == [] and by_key == {}
    done.result(timeout=30)
    assert len(freed_in) == 100  # not the 101st: ``kept`` is still held here
    assert threading.get_ident() not in freed_in


async def test_the_collector_resumes_once_what_a_paused_unit_released_is_freed() -> None:
    """Resumed earlier, its first young collection would walk every released object still alive."""
    collector_on_when_freed: list[bool] = []

    class Item:
        def __del__(self) -> None:
            collector_on_when_freed.append(gc.isenabled())

    kit_gc.released().result(timeout=30)  # an earlier test's pause has resumed
    assert gc.isenabled()
    async with kit_gc.gc_paused(True):
        assert not gc.isenabled()
        kit_gc.release([Item() for _ in range(20)])
    kit_gc.released().result(timeout=30)

    assert collector_on_when_freed == [False] * 20
    assert gc.isenabled()
