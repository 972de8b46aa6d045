"""Memory freed by units of work goes back to the OS: one trim shortly after, however many units."""

from __future__ import annotations

import asyncio

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
