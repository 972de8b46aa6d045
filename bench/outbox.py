"""Outbox throughput: jobs/s through enqueue, and through claim + no-op handler + complete.

    .venv/bin/python bench/outbox.py [--jobs 5000] [--keys 200] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Runs on a fresh SQLite file and on a fresh PostgreSQL database (created and dropped here). The
handler does nothing, so the figures are the outbox's own cost: one transaction per cycle records the
finished batch and claims the next (the worker's ``run`` loop, as in production).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from cht_interop.db import Database, migrate
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import NewJob
from cht_interop.delivery.registry import HandlerRegistry, Job
from cht_interop.delivery.worker import OutboxWorker
from cht_interop.settings import Settings

KIND = "bench.noop"


async def _noop(job: Job) -> None:
    return None


async def run(url: str, *, n_jobs: int, n_keys: int, workers: int, concurrency: int, batch: int) -> None:
    db = Database(url)
    try:
        async with db.transaction() as conn:
            done_before = (await outbox.count_by_status(conn))["done"]
        jobs = [NewJob(KIND, "bench", {"n": i}, ordering_key=f"k{i % n_keys}") for i in range(n_jobs)]
        t0 = time.perf_counter()
        async with db.transaction() as conn:
            await outbox.enqueue(conn, jobs)
        enqueue_s = time.perf_counter() - t0

        registry = HandlerRegistry()
        registry.register(KIND, _noop)
        settings = Settings(_env_file=None, DATABASE_URL=url)  # type: ignore[call-arg]
        dbs = [db] + [Database(url) for _ in range(workers - 1)]
        pool = [OutboxWorker(d, registry, settings, concurrency=concurrency, batch_size=batch) for d in dbs]
        stop = asyncio.Event()
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(w.run(stop)) for w in pool]
        while True:  # the production loop (run), watched from outside
            await asyncio.sleep(0.05)
            async with db.connect() as conn:
                counts = await outbox.count_by_status(conn)
            if counts["done"] - done_before >= n_jobs:
                break
        drain_s = time.perf_counter() - t0
        stop.set()
        await asyncio.gather(*tasks)
        for d in dbs[1:]:
            await d.dispose()
        assert counts["done"] - done_before == n_jobs, counts
        print(
            f"  enqueue {n_jobs} in one transaction: {n_jobs / enqueue_s:>9,.0f} jobs/s\n"
            f"  claim+handle+complete, {workers} worker(s), batch {batch}, {n_keys} keys:"
            f" {n_jobs / drain_s:>9,.0f} jobs/s ({drain_s:.2f} s)"
        )
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        migrate(url)
        print("SQLite (WAL, one worker: writers are serialised anyway)")
        asyncio.run(run(url, n_jobs=args.jobs, n_keys=args.keys, workers=1, concurrency=16, batch=args.batch))

    name = f"cht_interop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = args.pg.rsplit("/", 1)[0] + f"/{name}"
        migrate(url)
        for workers in (1, 4):
            print(f"PostgreSQL, {workers} worker(s)")
            asyncio.run(
                run(
                    url, n_jobs=args.jobs, n_keys=args.keys, workers=workers, concurrency=16, batch=args.batch
                )
            )
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
