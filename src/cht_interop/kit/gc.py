"""Pausing Python's cyclic garbage collector around one large unit of work.

A large transaction Bundle or LTFU list allocates millions of objects that all stay alive until
the end, so the collector's full passes (each over the whole heap) keep coming for nothing.
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
        yield
    finally:
        _gc_pauses -= 1
        if _gc_pauses == 0:
            gc.enable()
            # the unit's objects are freed once its answer has left: then give their pages back
            loop = asyncio.get_running_loop()
            loop.call_later(TRIM_AFTER_SECONDS, loop.run_in_executor, None, release_free_memory)
