"""``db/aiosqlite_compat.py`` leans on aiosqlite internals: these fail when aiosqlite changes them.

If one fails after an aiosqlite upgrade, the store still works (the module falls back to one
public ``executemany`` per statement, ~0.4 ms more per FHIR write); adapt the module to the new
internals, or drop the one-hop path if aiosqlite now has a public way.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from cht_interop.db import aiosqlite_compat
from cht_interop.db.aiosqlite_compat import Statement, executemany_each


@pytest.fixture
async def connection(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    async with aiosqlite.connect(tmp_path / "compat.sqlite3") as conn:
        await conn.execute("CREATE TABLE a (x INTEGER PRIMARY KEY, y TEXT)")
        await conn.execute("CREATE TABLE b (x INTEGER)")
        yield conn


def test_the_internals_it_uses_are_there() -> None:
    assert aiosqlite_compat.has_connection_thread_access(), (
        f"aiosqlite {aiosqlite.__version__} no longer has Connection._execute / Connection._conn"
    )
    assert aiosqlite_compat.ONE_HOP


async def test_the_function_runs_on_the_connections_own_thread(connection: aiosqlite.Connection) -> None:
    # the thread aiosqlite runs statements on, asked through its public API
    await connection.create_function("thread_id", 0, threading.get_ident)
    async with connection.execute("SELECT thread_id()") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    connection_thread = row[0]
    assert connection_thread != threading.get_ident()

    seen: list[int] = []

    def note_thread(value: str) -> str:
        seen.append(threading.get_ident())
        return value

    await connection.create_function("note_thread", 1, note_thread)
    await executemany_each(
        connection,
        [
            ("INSERT INTO a (x, y) VALUES (?, note_thread(?))", [(1, "one")]),
            ("INSERT INTO b VALUES (?)", [(1,)]),
        ],
    )
    assert seen == [connection_thread]


@pytest.mark.parametrize("one_hop", [True, False], ids=["one hop", "public calls"])
async def test_every_statement_runs_in_order_behind_calls_already_sent(
    connection: aiosqlite.Connection, one_hop: bool
) -> None:
    # sent (queued on the connection's thread), not yet finished: the batch must see its row
    earlier = asyncio.ensure_future(connection.execute("INSERT INTO a (x, y) VALUES (0, 'zero')"))
    await asyncio.sleep(0)
    assert not earlier.done()
    await executemany_each(
        connection,
        [
            ("INSERT INTO a (x, y) VALUES (?, ?)", [(1, "one"), (2, "two")]),
            ("INSERT INTO b (x) SELECT count(*) FROM a", [()]),
            ("INSERT INTO b (x) VALUES (?)", [(7,), (8,)]),
        ],
        one_hop=one_hop,
    )
    await earlier
    assert [tuple(r) for r in await connection.execute_fetchall("SELECT x, y FROM a ORDER BY x")] == [
        (0, "zero"),
        (1, "one"),
        (2, "two"),
    ]
    assert [tuple(r) for r in await connection.execute_fetchall("SELECT x FROM b ORDER BY rowid")] == [
        (3,),
        (7,),
        (8,),
    ]


@pytest.mark.parametrize("one_hop", [True, False], ids=["one hop", "public calls"])
async def test_sqlite_errors_reach_the_caller(connection: aiosqlite.Connection, one_hop: bool) -> None:
    duplicate_key = [(1, "a"), (1, "b")]
    statements: list[Statement] = [
        ("INSERT INTO b VALUES (?)", [(1,)]),
        ("INSERT INTO a (x, y) VALUES (?, ?)", duplicate_key),
    ]
    with pytest.raises(sqlite3.IntegrityError):
        await executemany_each(connection, statements, one_hop=one_hop)
