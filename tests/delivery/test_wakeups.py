"""A worker wakes for jobs another process committed, without waiting for its poll.

In production ``serve`` commits the jobs (an Encounter's callback) and ``worker`` runs them: the
commit hook of one process never fires in the other. Here the second process is a second
``Database`` (its own engine and connections) on the same database, and the worker's poll is a
minute: a job run within seconds was woken by the commit (NOTIFY on PostgreSQL, the file's data
version on SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from cht_interop.db import Database
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import DeliveryReceipt, NewJob
from cht_interop.delivery.registry import HandlerRegistry, Job
from cht_interop.delivery.wakeups import SQLITE_WATCH_SECONDS, CommitWatch
from cht_interop.delivery.worker import OutboxWorker
from tests.conftest import make_settings

KIND = "test.wake"
POLL_SECONDS = 60.0


async def test_a_job_committed_by_another_process_runs_before_the_next_poll(
    tmp_path: Path, database_url: str
) -> None:
    ran: asyncio.Queue[str] = asyncio.Queue()

    async def handler(job: Job) -> DeliveryReceipt:
        await ran.put(str(job.payload["n"]))
        return DeliveryReceipt(http_status=200)

    registry = HandlerRegistry()
    registry.register(KIND, handler)
    settings = make_settings(tmp_path, database_url, DELIVERY_POLL_SECONDS=POLL_SECONDS)
    worker_db, other_process = Database(database_url), Database(database_url)
    worker = OutboxWorker(worker_db, registry, settings)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(0.5)  # the worker has polled once and now sleeps for a minute
        for n in range(3):  # each commit wakes it again
            async with other_process.transaction() as conn:
                await outbox.enqueue(conn, [NewJob(KIND, "peer", {"n": n}, ordering_key=f"k{n}")])
            assert await asyncio.wait_for(ran.get(), timeout=10) == str(n)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=10)
        await worker_db.dispose()
        await other_process.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_watch_looks_only_while_the_worker_is_idle_and_then_sees_what_was_missed(
    database_url: str,
) -> None:
    """A busy worker claims again as each attempt finishes: the watch does not look then (under
    load it was ~4% of ``up``'s main thread). A commit made meanwhile wakes the worker as soon as
    it is idle."""
    watched, other_process = Database(database_url), Database(database_url)
    woken = asyncio.Event()
    idle = asyncio.Event()  # the worker is busy
    stop = asyncio.Event()
    watching = asyncio.create_task(CommitWatch(watched, woken.set, idle).run(stop))
    try:
        await asyncio.sleep(10 * SQLITE_WATCH_SECONDS)  # the watch has started and is waiting
        async with other_process.transaction() as conn:
            await outbox.enqueue(conn, [NewJob(KIND, "peer", {"n": 0}, ordering_key="k")])
        # a window of 20 looks: the watch as it was woke within one
        await asyncio.sleep(20 * SQLITE_WATCH_SECONDS)
        assert not woken.is_set()
        idle.set()
        await asyncio.wait_for(woken.wait(), timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(watching, timeout=10)
        await watched.dispose()
        await other_process.dispose()
