"""Fewer glibc malloc arenas: memory that threads free is reused by the others, not kept apart.

glibc gives each thread that allocates under contention an arena of its own (up to 8 per core),
and memory freed in one arena is only reused by threads in that arena. aiosqlite runs each SQLite
connection in a thread of its own, and SQLite's page cache is allocated there: each connection's
thread kept its own ~12 MB arena (measured in the ``up`` process holding 20,000 follow-ups:
14 such arenas, ~170 MB of the resident set). Two arenas for the whole process share that memory
(the box has 2 cores; the allocations are not where the time goes). ``MALLOC_ARENA_MAX`` in the
environment overrides it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ARENA_MAX = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
_done = False


def limit_malloc_arenas(arenas: int = ARENA_MAX) -> None:
    """Cap glibc's malloc arenas for this process (once; before the threads that would each take one)."""
    global _done
    if _done or "MALLOC_ARENA_MAX" in os.environ:
        return
    _done = True
    name = ctypes.util.find_library("c")
    if name is None:
        return  # not glibc (musl, macOS): nothing to cap
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, arenas)
