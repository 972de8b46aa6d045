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

A library's read-only pages that only its loading read stay resident too: mini-racer's V8 library
is linked ``BIND_NOW``, so the dynamic linker resolves its ~50,000 relocations by name at load,
reading ~19 MB of symbol tables that nothing reads again (``sandbox/js.py``).
:func:`release_loaded_pages` drops them; a page read later comes back from the page cache.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

ARENA_MAX = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
_MADV_DONTNEED = 4  # madvise's advice number (Linux)
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


def release_loaded_pages(library: Path) -> int:
    """Drop this process's resident pages of ``library``'s read-only mappings that hold no page of
    their own (every page as in the file): the next read of one maps it again from the page cache.
    Mappings the loader wrote (relocations, then made read-only) are left alone. Returns the bytes
    of the mappings dropped (0 without Linux's ``/proc`` or glibc)."""
    madvise = getattr(_glibc(), "madvise", None)
    if madvise is None:
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    dropped = 0
    for start, end in _clean_read_only_mappings(str(library.resolve())):
        if madvise(start, end - start, _MADV_DONTNEED) == 0:
            dropped += end - start
    return dropped


def _clean_read_only_mappings(path: str) -> list[tuple[int, int]]:
    """``(start, end)`` of ``path``'s ``r--p`` mappings whose pages are all the file's (no
    ``Anonymous`` copy-on-write page), from ``/proc/self/smaps``."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return []
    found: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) >= 5 and "-" in fields[0] and ":" not in fields[0]:  # a mapping's header
            start, _, end = fields[0].partition("-")
            readable_only = fields[1] == "r--p" and len(fields) >= 6 and fields[5] == path
            current = (int(start, 16), int(end, 16)) if readable_only else None
        elif current is not None and fields[:1] == ["Anonymous:"]:
            if fields[1] == "0":
                found.append(current)
            current = None
    return found


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return None  # not glibc (musl, macOS): nothing to tune
        _libc = ctypes.CDLL(name)
    return _libc
