"""Several statements in one call into aiosqlite's thread: the one place that uses its internals.

aiosqlite runs each call on its connection's own thread: one hop there and back per call, and it
has no public way to send several statements at once. A FHIR write inserts into about six tables;
measured on the shared 2-core box, alternating in one process: six inserts as one hop ~80 µs, as
six public ``executemany`` calls ~355 µs; ``FhirStore.create`` p50 2.0 ms one hop, 2.45 ms
public calls (CPU per create 1.7 vs 2.15 ms). Group commit hides it under concurrent load.

So :func:`executemany_each` queues one function on that thread through ``Connection._execute``,
handing it the sqlite3 connection (``Connection._conn``), as aiosqlite's own methods do
(0.20 to 0.22). ``tests/db/test_aiosqlite_compat.py`` fails when those internals change; if they
are missing at run time it falls back to one public ``executemany`` per statement.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

Statement = tuple[str, Sequence[tuple[Any, ...]]]  # SQL with ``?`` markers, one row of values per run


def has_connection_thread_access() -> bool:
    """Whether this aiosqlite still has the internals :func:`executemany_each` uses."""
    return callable(getattr(aiosqlite.Connection, "_execute", None)) and isinstance(
        getattr(aiosqlite.Connection, "_conn", None), property
    )


ONE_HOP = has_connection_thread_access()


async def executemany_each(
    connection: aiosqlite.Connection, statements: Sequence[Statement], *, one_hop: bool = ONE_HOP
) -> None:
    """``executemany`` every statement, in order, in one call into the connection's thread (queued
    behind the calls already sent on it, as any aiosqlite call is). sqlite3 errors propagate.
    ``one_hop=False``: one public call per statement."""
    if not one_hop or len(statements) == 1:
        for sql, rows in statements:
            await connection.executemany(sql, rows)
        return

    def run(db: sqlite3.Connection) -> None:  # on aiosqlite's thread
        for sql, rows in statements:
            db.executemany(sql, rows)

    # aiosqlite leaves its internal ``_execute`` unannotated
    await connection._execute(run, connection._conn)  # type: ignore[no-untyped-call]
