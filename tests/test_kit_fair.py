"""``kit/fair.py``'s Breather: a long loop on the event loop yields once it has held it ``every``
seconds, and only then (a clock of the test's own: no timing in tests)."""

from __future__ import annotations

import asyncio

import pytest

from cht_interop.kit import fair


async def test_a_breather_yields_to_the_loop_once_it_has_held_it_long_enough() -> None:
    clock = [100.0]
    others: list[int] = []

    async def other() -> None:
        others.append(1)

    breather = fair.Breather(every=0.002, clock=lambda: clock[0])
    task = asyncio.create_task(other())
    clock[0] += 0.0019
    await breather.breathe()  # held less than ``every``: no yield, the other task has not run
    assert others == []
    clock[0] += 0.0001
    await breather.breathe()  # held ``every``: the loop runs the other task
    assert others == [1]
    await task


def test_big_requests_yield_the_loop_every_two_milliseconds() -> None:
    assert fair.Breather().every == fair.BREATHE_SECONDS == 0.002


async def test_paced_items_let_the_loop_run_others_once_they_have_held_it_long_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[int] = []

    async def other() -> None:
        ran.append(1)

    task = asyncio.create_task(other())
    monkeypatch.setattr(fair, "BREATHE_SECONDS", 0.0)  # every item has held the loop long enough
    seen_between: list[int] = []
    async for _item in fair.paced(range(3)):
        seen_between.append(len(ran))
    assert seen_between == [0, 1, 1]  # the other task ran after the first item, not before it
    await task


async def test_paced_items_keep_the_loop_while_they_are_quick() -> None:
    ran: list[int] = []

    async def other() -> None:
        ran.append(1)

    task = asyncio.create_task(other())
    assert [item async for item in fair.paced(range(3))] == [0, 1, 2]
    assert ran == []  # three items in far less than BREATHE_SECONDS: no yield
    await task
