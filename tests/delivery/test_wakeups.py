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

from cht_interop.db import Database
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import DeliveryReceipt, NewJob
from cht_interop.delivery.registry import HandlerRegistry, Job
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
