"""Request bodies as JSON, within a nesting limit, parsed off the event loop when they are big.

orjson reads up to 1024 levels of nesting, but writes only about 250, and the FHIR models behind
validation recurse in Python (a ``given`` nested 300 arrays deep raised ``RecursionError``; 125
levels of nested extensions were stored, then failed to be written out). One limit for every
body, checked on the parsed value before any model sees it, keeps all of them out of reach:
``MAX_JSON_DEPTH`` levels of objects and arrays, the body itself being level 1 (a FHIR resource
with 40 levels of nested ``item`` or ``extension`` is about 80; a Bundle adds 3 around it).

A big body's parse and check (about 1.3 s for a 32 MiB transaction on the shared test machine)
runs in a worker thread, so that other requests, and ``/health/live``, are answered meanwhile.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import orjson

from cht_interop.kit.gc import gc_paused

MAX_JSON_DEPTH = 100
# bodies from this size are parsed in a worker thread (a thread hop costs ~0.1 ms; parsing a
# 256 KiB body ~2 ms, the most a request may hold the event loop for here)
OFF_LOOP_BYTES = 256 * 1024
GC_PAUSE_BYTES = 4 * 1024 * 1024  # ~1,000 small resources, as kit/gc.py's GC_PAUSE_ENTRIES


class JsonTooDeep(ValueError):
    """The body nests objects and arrays deeper than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels of objects and arrays")
        self.limit = limit


def nesting_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if ``value`` nests objects and arrays more than ``limit`` levels (itself being 1).

    A loop over an explicit stack (never recursion, which is what a deep value would break); it
    visits each container once: ~0.3 s for a 100,000-entry Bundle."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The body's JSON value; raises ``orjson.JSONDecodeError`` or :class:`JsonTooDeep`."""
    value = orjson.loads(body)
    if nesting_exceeds(value, max_depth):
        raise JsonTooDeep(max_depth)
    return value


async def parse_json_body(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """:func:`parse_json`, in a worker thread for a body of ``OFF_LOOP_BYTES`` or more; with the
    cyclic GC paused for a body of ``GC_PAUSE_BYTES`` or more (parsing one allocates millions of
    objects, and each full collection over them holds the GIL, the event loop's too)."""
    if len(body) < OFF_LOOP_BYTES:
        return parse_json(body, max_depth)
    async with gc_paused(len(body) >= GC_PAUSE_BYTES):
        return await anyio.to_thread.run_sync(parse_json, body, max_depth)
