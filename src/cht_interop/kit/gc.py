"""Python's cyclic garbage collector in a long-running server: young collections rarer than
CPython's default (``collect_young_less_often``), the collector paused around the largest units of
work, and the memory of every one handed back to the OS shortly after it ends.

A large transaction Bundle or LTFU list allocates millions of objects that all stay alive until
the end, so the collector's full passes (each over the whole heap) keep coming for nothing. Once
such a unit (any Bundle or list, a staged list's background chunk) has freed its objects, glibc
keeps their pages (``kit/arenas.py``): they go back ``TRIM_AFTER_SECONDS`` later, at most one trim
a second however many units come (only Bundles of 1,000 entries or more were followed by one,
and a bulk load's are 500: ``up`` holding 100,000 follow-ups, 285 -> 259 MiB resident).

Freeing a unit's objects is work too: when its last reference goes, one C call frees them all,
holding the event loop. A 10,000-entry LTFU list's entries, patients and answers held it ~50 ms
at the end of its acceptance and ~30 ms at the end of its staging (a tracer's samples,
2026-12-07). ``release`` empties their containers at once and frees what they held in a worker
thread, an item at a time, so the loop takes the GIL back between two items (``kit/fair.py``);
a pause of the collector ends only once what was released during it is freed, or the first
young collection walked it all, still alive (~40 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from cht_interop.kit.arenas import release_free_memory

# Young collections once this many more container objects are alive than at the last one (CPython:
# 700). A single follow-up keeps ~200 alive until it is answered, so at 700 a young collection came
# every ~3.5 ms under load (~0.3 per request at 32 clients) and found the objects of every request
# in flight still alive: they were promoted, and the promotions brought a full collection (all
# ~35-50k objects not frozen at start) every ~450 requests. Group commit answers the 32 requests of
# a batch together, so each full pass (10-25 ms of CPU) stretched a whole batch: that batch was the
# run's p99. At 10,000 the requests' objects are freed by reference counting before a collection
# sees them: over 2,000 follow-ups at 32 clients (serve, SQLite; traced, docs/performance.md)
# 1-6 young, 0-1 middle, 0 full collections instead of 541-580, 49-53 and 4-5, and 2-40 ms of
# collector CPU instead of 157-313 ms.
YOUNG_COLLECTION_OBJECTS = 10_000
TRIM_AFTER_SECONDS = 1.0  # after a unit of work ends: its pages go back (kit/arenas.py)
GC_PAUSE_ENTRIES = 1000  # transaction Bundles this large run with the cyclic GC paused
_gc_pauses = 0  # transactions currently holding the pause
_pauses_lock = threading.Lock()  # the pause ends in the releaser's thread
# one thread frees what ``release`` hands it, in order: freeing is GIL work, a second thread would
# only compete with the first for it
_RELEASER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="release")
_trim_due: asyncio.AbstractEventLoop | None = None  # the loop a trim is due on (one at a time)


def collect_young_less_often() -> None:
    """A long-running server's collector setting (``serve``, ``up``): young collections every
    ``YOUNG_COLLECTION_OBJECTS``, so requests in flight are not promoted into the full passes'
    reach. Cycles are still found, a little later; the older generations' ratios are CPython's."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_OBJECTS, middle, old)


@asynccontextmanager
async def gc_paused(active: bool) -> AsyncIterator[None]:
    """Pause Python's cyclic garbage collector while a large transaction Bundle is written (and,
    large or not, return its memory after it: ``memory_returned``).

    Staging 30,000 resources allocates millions of objects that all stay alive until the end, so
    the collector's full passes (each over the whole heap) kept coming: a quarter of the time of
    such a Bundle, measured. Reference counting still frees everything that is not a cycle; the
    collector resumes when the last large transaction ends and what it ``release``d is freed (and
    is left alone if it was off).
    """
    global _gc_pauses
    with _pauses_lock:
        paused = active and (_gc_pauses > 0 or gc.isenabled())
        if paused:
            _gc_pauses += 1
            gc.disable()
    try:
        async with memory_returned():
            yield
    finally:
        if paused:
            _RELEASER.submit(_resume)  # after what was released before it


def _resume() -> None:
    global _gc_pauses
    with _pauses_lock:
        _gc_pauses -= 1
        if _gc_pauses == 0:
            gc.enable()


def release(*containers: list[Any] | dict[Any, Any]) -> Future[None]:
    """Empty ``containers`` now; what they held (a dict's values) is freed in a worker thread, an
    item at a time, wherever no other reference keeps it. The future is done once it is."""
    held: list[Any] = []
    for container in containers:
        held.extend(container.values() if isinstance(container, dict) else container)
        container.clear()
    return _RELEASER.submit(_free_one_by_one, held)


def released() -> Future[None]:
    """Done once everything ``release``d so far is freed (and a pause that ended before resumed)."""
    return _RELEASER.submit(lambda: None)


def _free_one_by_one(held: list[Any]) -> None:
    while held:
        held.pop()  # one item's objects freed: the interpreter may hand the GIL over here


@asynccontextmanager
async def memory_returned() -> AsyncIterator[None]:
    """A unit of work that allocates much and frees it all at its end (a Bundle, an LTFU list, a
    staged list's chunk): ``TRIM_AFTER_SECONDS`` after it ends, the pages glibc kept go back to the
    OS, so the resident set does not stay at the unit's peak. One trim covers every unit that ended
    before it: a stream of units (a bulk load's Bundles one after another) trims once a second."""
    global _trim_due
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        if _trim_due is not loop:  # none due on this loop yet (another loop's ended with it: tests)
            # the unit's objects are freed once its answer has left: then give their pages back
            _trim_due = loop
            loop.call_later(TRIM_AFTER_SECONDS, _trim_in_thread, loop)


def _trim_in_thread(loop: asyncio.AbstractEventLoop) -> None:
    global _trim_due
    _trim_due = None
    with contextlib.suppress(RuntimeError):  # the loop is shutting down its executor: no need
        loop.run_in_executor(None, release_free_memory)


async def memory_returned_once(ready: Callable[[], bool]) -> None:
    """Once ``ready()`` (a server has started: its app, services and sandbox built), the pages
    its start-up freed go back to the OS. Start-up allocates and frees much (migrations' child
    aside: the app's routes and schemas, the sandbox's configuration and V8's first run), and glibc
    kept those pages: ``up --cht-sandbox`` idle, 188 -> ~158 MiB resident. Checked every 0.1 s."""
    while not ready():  # noqa: ASYNC110 (uvicorn's Server.started is a bare flag: no event to await)
        await asyncio.sleep(0.1)
    await asyncio.to_thread(release_free_memory)
