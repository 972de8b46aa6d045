"""SQLite's writer queue: small writers are not queued behind bulk ones, and bulk ones still get
their turn; a cancelled waiter never keeps the writer."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from cht_interop.db import Database
from cht_interop.db.writers import WriterQueue


async def _wait_until_queued(queue: WriterQueue, tasks: list[asyncio.Task[None]]) -> None:
    for _ in range(5):  # each task reaches its ``acquire`` within a few loop turns
        await asyncio.sleep(0)
    assert queue.held and not any(t.done() for t in tasks)


async def _take(queue: WriterQueue, name: str, order: list[str], *, bulk: bool) -> None:
    await queue.acquire(bulk=bulk)
    order.append(name)
    await asyncio.sleep(0)
    queue.release()


async def test_small_writers_waiting_go_before_a_bulk_writer_that_queued_first() -> None:
    queue = WriterQueue()
    await queue.acquire()
    order: list[str] = []
    tasks = [asyncio.create_task(_take(queue, "bulk", order, bulk=True))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(_take(queue, f"small{i}", order, bulk=False)) for i in range(2)]
    await _wait_until_queued(queue, tasks)
    queue.release()
    await asyncio.gather(*tasks)
    assert order == ["small0", "small1", "bulk"]
    assert not queue.held


async def test_a_bulk_writer_waits_for_later_small_writers_only_so_long() -> None:
    queue = WriterQueue(patience=0.0)  # its patience is spent: it takes the next turn
    await queue.acquire()
    order: list[str] = []
    tasks = [asyncio.create_task(_take(queue, "bulk", order, bulk=True))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(_take(queue, "small", order, bulk=False)))
    await _wait_until_queued(queue, tasks)
    queue.release()
    await asyncio.gather(*tasks)
    assert order == ["bulk", "small"]


async def test_a_waiter_cancelled_after_being_handed_the_writer_passes_it_on() -> None:
    queue = WriterQueue()
    await queue.acquire()
    order: list[str] = []
    first = asyncio.create_task(_take(queue, "first", order, bulk=False))
    second = asyncio.create_task(_take(queue, "second", order, bulk=True))
    await _wait_until_queued(queue, [first, second])
    queue.release()  # hands the writer to ``first``...
    first.cancel()  # ... which is cancelled before it runs again
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, timeout=5)
    assert order == ["second"]
    assert not queue.held


async def test_a_waiter_cancelled_in_the_queue_does_not_keep_the_writer() -> None:
    queue = WriterQueue()
    await queue.acquire()
    order: list[str] = []
    gone = asyncio.create_task(_take(queue, "gone", order, bulk=False))
    await _wait_until_queued(queue, [gone])
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    queue.release()
    assert not queue.held
    await asyncio.wait_for(_take(queue, "next", order, bulk=False), timeout=5)
    assert order == ["next"]


async def test_a_small_transaction_commits_before_a_bulk_one_queued_ahead_of_it(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        async with db.transaction() as setup:
            await setup.execute(text("CREATE TABLE w (name TEXT)"))
        holding, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with db.transaction() as conn:
                await conn.execute(text("INSERT INTO w VALUES ('holder')"))
                holding.set()
                await release.wait()

        async def write(name: str, *, bulk: bool) -> None:
            async with db.transaction(bulk=bulk) as conn:
                await conn.execute(text("INSERT INTO w VALUES (:n)"), {"n": name})

        first = asyncio.create_task(holder())
        await holding.wait()
        bulk = asyncio.create_task(write("bulk", bulk=True))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(write("small", bulk=False))
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(first, bulk, small)
        async with db.connect() as conn:
            rows = await conn.execute(text("SELECT name FROM w ORDER BY rowid"))
            assert [r[0] for r in rows] == ["holder", "small", "bulk"]
    finally:
        await db.dispose()
