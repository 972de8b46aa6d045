"""Large units of work: Python's cyclic garbage collector paused around the largest, and the memory
of every one handed back to the OS once the last has ended.

A large transaction Bundle or LTFU list allocates millions of objects that all stay alive until
the end, so the collector's full passes (each over the whole heap) keep coming for nothing. Once
such a unit (or a staged list's background chunk) has freed its objects, glibc keeps their pages
(``kit/arenas.py``): they go back ``TRIM_AFTER_SECONDS`` after the last unit in progress ends.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cht_interop.kit.arenas import release_free_memory

TRIM_AFTER_SECONDS = 1.0  # after the last large unit of work: its pages go back (kit/arenas.py)
GC_PAUSE_ENTRIES = 1000  # transaction Bundles this large run with the cyclic GC paused
_gc_pauses = 0  # transactions currently holding the pause
_units = 0  # large units of work in progress, paused or not
_trim: asyncio.TimerHandle | None = None  # the trim due after the last one ended


@asynccontextmanager
async def gc_paused(active: bool) -> AsyncIterator[None]:
    """Pause Python's cyclic garbage collector while a large transaction Bundle is written.

    Staging 30,000 resources allocates millions of objects that all stay alive until the end, so
    the collector's full passes (each over the whole heap) kept coming: a quarter of the time of
    such a Bundle, measured. Reference counting still frees everything that is not a cycle; the
    collector resumes when the last large transaction ends (and is left alone if it was off).
    """
    global _gc_pauses
    if not active or (_gc_pauses == 0 and not gc.isenabled()):
        yield
        return
    _gc_pauses += 1
    gc.disable()
    try:
        async with memory_returned():
            yield
    finally:
        _gc_pauses -= 1
        if _gc_pauses == 0:
            gc.enable()


@asynccontextmanager
async def memory_returned() -> AsyncIterator[None]:
    """A unit of work that allocates much and frees it all at its end (a large Bundle, a staged
    list's chunk): ``TRIM_AFTER_SECONDS`` after the last such unit in progress has ended, the pages
    glibc kept go back to the OS, so the resident set does not stay at the unit's peak."""
    global _units, _trim
    _units += 1
    if _trim is not None:
        _trim.cancel()  # a unit is running again: trim after it instead
        _trim = None
    try:
        yield
    finally:
        _units -= 1
        if _units == 0:
            # the unit's objects are freed once its answer has left: then give their pages back
            loop = asyncio.get_running_loop()
            _trim = loop.call_later(TRIM_AFTER_SECONDS, _trim_in_thread, loop)


def _trim_in_thread(loop: asyncio.AbstractEventLoop) -> None:
    global _trim
    _trim = None
    loop.run_in_executor(None, release_free_memory)


def units_in_progress() -> int:
    """How many large units of work are running (0: a trim is due or done)."""
    return _units
