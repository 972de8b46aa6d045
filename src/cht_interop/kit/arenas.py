"""Memory that the process freed goes back to use: fewer glibc malloc arenas, and a trim after
each large unit of work.

glibc gives each thread that allocates under contention an arena of its own (up to 8 per core),
and memory freed in one arena is only reused by threads in that arena. aiosqlite runs each SQLite
connection in a thread of its own, and SQLite's page cache is allocated there: each connection's
thread kept its own ~12 MB arena (measured in the ``up`` process holding 20,000 follow-ups:
14 such arenas, ~170 MB of the resident set). Two arenas for the whole process share that memory
(the box has 2 cores; the allocations are not where the time goes). ``MALLOC_ARENA_MAX`` in the
environment overrides it.

A large Bundle or LTFU list peaks at hundreds of MB of small objects; once they are freed glibc
keeps the pages (free chunks between live ones are never returned on their own), so the resident
set stayed at the peak. :func:`release_free_memory` (``malloc_trim``) hands the free pages back; it
runs in a thread shortly after the last large unit of work ends (``kit/gc.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ARENA_MAX = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
_done = False
_libc: ctypes.CDLL | None = None


def limit_malloc_arenas(arenas: int = ARENA_MAX) -> None:
    """Cap glibc's malloc arenas for this process (once; before the threads that would each take one)."""
    global _done
    if _done or "MALLOC_ARENA_MAX" in os.environ:
        return
    _done = True
    mallopt = getattr(_glibc(), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, arenas)


def release_free_memory() -> None:
    """Return the free pages of every malloc arena to the OS (glibc only; a few ms per 100 MB)."""
    trim = getattr(_glibc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return None  # not glibc (musl, macOS): nothing to tune
        _libc = ctypes.CDLL(name)
    return _libc
