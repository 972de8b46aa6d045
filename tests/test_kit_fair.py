"""``kit/fair.py``'s Breather: a long loop on the event loop yields once it has held it ``every``
seconds, and only then (a clock of the test's own: no timing in tests)."""

from __future__ import annotations

import asyncio

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
