"""The transaction rules of the embedded SQLite database."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from cht_interop.db import Database


async def test_sqlite_reads_do_not_wait_for_an_open_write_transaction(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        async with db.transaction() as setup:
            await setup.execute(text("CREATE TABLE t (v INTEGER)"))
            await setup.execute(text("INSERT INTO t VALUES (1)"))
        async with db.transaction() as writer:
            await writer.execute(text("INSERT INTO t VALUES (2)"))
            # a reader sees the last committed state at once, while the writer holds the lock
            async with db.connect() as reader:
                rows = await asyncio.wait_for(reader.execute(text("SELECT v FROM t ORDER BY v")), timeout=5)
                assert [r[0] for r in rows] == [1]
        async with db.connect() as reader:
            assert [r[0] for r in await reader.execute(text("SELECT v FROM t ORDER BY v"))] == [1, 2]
    finally:
        await db.dispose()


async def test_sqlite_writers_queue_instead_of_failing(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        async with db.transaction() as setup:
            await setup.execute(text("CREATE TABLE c (n INTEGER)"))
            await setup.execute(text("INSERT INTO c VALUES (0)"))

        async def increment() -> None:
            async with db.transaction() as conn:
                n = (await conn.execute(text("SELECT n FROM c"))).scalar_one()
                await asyncio.sleep(0.01)
                await conn.execute(text("UPDATE c SET n = :n"), {"n": n + 1})

        await asyncio.gather(*(increment() for _ in range(10)))
        async with db.connect() as conn:
            assert (await conn.execute(text("SELECT n FROM c"))).scalar_one() == 10
    finally:
        await db.dispose()
