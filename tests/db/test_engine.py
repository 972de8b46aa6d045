"""The transaction rules of the embedded SQLite database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from sqlalchemy import text

from cht_interop.db import Database
from cht_interop.db.driver import Driver
from cht_interop.db.engine import SQLITE_HEAP_LIMIT_BYTES


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


async def test_a_transaction_cancelled_while_it_begins_stays_cancelled(db: Database) -> None:
    """Cancelling a task at any await of ``transaction()`` (connecting, BEGIN, the body, COMMIT)
    must surface as a cancellation: the outbox worker stops on CancelledError and retries on any
    other exception, so anything else would keep a dying worker running."""
    ended: list[bool] = []
    db.on_transaction_end(lambda _info, committed: ended.append(committed))
    async with db.transaction() as setup:
        await setup.execute(text("CREATE TABLE cancelled_t (v INTEGER)"))
    try:
        for steps in range(12):  # cancel after 0, 1, 2 … turns of the event loop

            async def write() -> None:
                async with db.transaction() as conn:
                    await conn.execute(text("INSERT INTO cancelled_t VALUES (1)"))

            task = asyncio.create_task(write())
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            # cancelled (or finished before the cancel): any other exception fails the test
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with db.transaction() as conn:  # nothing was left holding the write lock
            count = (await conn.execute(text("SELECT count(*) FROM cancelled_t"))).scalar()
        assert count is not None and count <= 12
        assert ended[0] is True and ended[-1] is True
    finally:
        async with db.transaction() as conn:  # the database is shared with the migration test
            await conn.execute(text("DROP TABLE cancelled_t"))


async def test_sqlite_commits_are_synced_to_disk_on_every_connection(sqlite_url: str) -> None:
    """A commit is acknowledged only once it would survive a power cut: WAL with synchronous=FULL
    (2) on each pooled connection, the writer's and the readers' alike."""
    db = Database(sqlite_url)
    try:
        async with db.transaction() as writer, db.connect() as reader:
            for conn in (writer, reader):
                assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
                assert (await conn.execute(text("PRAGMA synchronous"))).scalar_one() == 2
    finally:
        await db.dispose()


async def test_a_connection_returned_inside_a_transaction_is_rolled_back(sqlite_url: str) -> None:
    """Whatever a caller leaves open (a write begun on the driver, never ended) is rolled back when
    its connection goes back to the pool: the row is not there and the write lock is free."""
    db = Database(sqlite_url)
    try:
        async with db.transaction() as setup:
            await setup.execute(text("CREATE TABLE t (v INTEGER)"))
        async with db.engine.connect() as conn:
            driver = await Driver.of(conn)
            await driver.execute("BEGIN IMMEDIATE")
            await driver.execute("INSERT INTO t VALUES (1)")
            assert driver.raw.in_transaction
        # every pooled connection is free of it: a writer gets the lock at once, readers see no row

        async def write() -> None:
            async with db.transaction() as writer:
                await writer.execute(text("INSERT INTO t VALUES (2)"))

        await asyncio.wait_for(write(), timeout=5)
        async with db.connect() as reader:
            assert [r[0] for r in await reader.execute(text("SELECT v FROM t"))] == [2]
    finally:
        await db.dispose()


async def test_sqlite_connections_wait_the_configured_busy_timeout_within_one_cache_budget(
    sqlite_url: str,
) -> None:
    db = Database(sqlite_url, busy_timeout_seconds=0.25)
    try:
        async with db.connect() as conn:
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 250
            # every connection's page cache together, not 16 MiB per pooled connection
            assert (await conn.execute(text("PRAGMA soft_heap_limit"))).scalar() == SQLITE_HEAP_LIMIT_BYTES
    finally:
        await db.dispose()


async def test_sqlite_connections_map_none_of_the_database_file(sqlite_url: str) -> None:
    """Each pooled connection's memory-mapped pages counted in the resident set on their own: the
    database file is read into the budgeted page cache instead (``PRAGMA mmap_size`` 0)."""
    db = Database(sqlite_url)
    try:
        async with db.connect() as reader, db.transaction() as writer:
            assert (await reader.execute(text("PRAGMA mmap_size"))).scalar() == 0
            assert (await writer.execute(text("PRAGMA mmap_size"))).scalar() == 0
    finally:
        await db.dispose()


async def test_sqlite_wal_is_checkpointed_in_the_background_not_by_commits(tmp_path: Path) -> None:
    """A process that serves writes copies the WAL into the database file from a thread of its
    own (a checkpoint inside a commit held every other writer while it copied and synced); a
    commit checkpoints only past the backstop, so without the thread the pages stay in the WAL."""
    written = 4 * 1024 * 1024

    async def write(db: Database) -> None:
        async with db.transaction() as conn:
            await conn.execute(text("CREATE TABLE t (v BLOB)"))
        for _ in range(20):
            async with db.transaction() as conn:
                await conn.execute(text("INSERT INTO t VALUES (randomblob(:n))"), {"n": written // 20})

    quiet = tmp_path / "quiet.sqlite3"
    db = Database(f"sqlite:///{quiet}")
    try:
        await write(db)
        assert quiet.stat().st_size < written // 4  # all of it still in the WAL
    finally:
        await db.dispose()

    served = tmp_path / "served.sqlite3"
    db = Database(f"sqlite:///{served}", background_checkpoints=True)
    try:
        await write(db)
        # a file's size has no event to await: polled, in a thread, for as long as 20 s
        assert await asyncio.to_thread(_grows_to, served, written, 20)  # while the pool stays open
    finally:
        await db.dispose()
    assert db.checkpointer is not None and not db.checkpointer.running


def _grows_to(path: Path, size: int, within_seconds: float) -> bool:
    deadline = time.monotonic() + within_seconds
    while path.stat().st_size < size and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.stat().st_size >= size
