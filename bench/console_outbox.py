"""What a follow-up's console page pays to find its deliveries among many outbox jobs.

    .venv/bin/python bench/console_outbox.py [--jobs 300000] [--postgres]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Fills the outbox with N delivered jobs (one follow-up's CHT record and callback each, ordering keys
``ltfu:<id>`` and ``Subscription/<id>``, as the mediator writes them), then prints the p50 and max
of ``console.queries.jobs_for_keys`` for one follow-up (its two keys), with the index
``ix_outbox_jobs_ordering_key_id`` (delivery_0003) and after dropping it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from sqlalchemy import insert, text

import cht_interop.tables  # noqa: F401  (every table on the metadata)
from cht_interop.console import queries
from cht_interop.db import Database, migrate
from cht_interop.delivery.tables import outbox_jobs

CHUNK = 5000
ROUNDS = 30


def _job(n: int, now: datetime) -> dict[str, object]:
    follow_up = n // 2
    key = f"ltfu:fu-{follow_up}" if n % 2 == 0 else f"Subscription/sub-{follow_up}"
    return {
        "notification_id": str(uuid.uuid4()),
        "kind": "cht.record" if n % 2 == 0 else "fhir.subscription-notification",
        "target": "http://peer.invalid/",
        "payload": {"follow_up": f"fu-{follow_up}"},
        "ordering_key": key,
        "status": "done",
        "attempts": 1,
        "next_attempt_at": now,
        "horizon_from": now,
        "created_at": now,
        "updated_at": now,
    }


async def _fill(db: Database, n_jobs: int) -> None:
    now = datetime.now(UTC)
    for start in range(0, n_jobs, CHUNK):
        async with db.transaction() as conn:
            await conn.execute(
                insert(outbox_jobs), [_job(n, now) for n in range(start, min(n_jobs, start + CHUNK))]
            )


async def _measure(db: Database, n_jobs: int) -> tuple[float, float]:
    took = []
    for i in range(ROUNDS):
        follow_up = (i * 7919) % (n_jobs // 2)
        keys = [f"ltfu:fu-{follow_up}", f"Subscription/sub-{follow_up}"]
        started = time.perf_counter()
        async with db.connect() as conn:
            found = await queries.jobs_for_keys(conn, keys)
        took.append((time.perf_counter() - started) * 1000)
        assert len(found) == 2, found
    return statistics.median(took), max(took)


async def run(url: str, n_jobs: int) -> None:
    db = Database(url)
    try:
        started = time.perf_counter()
        await _fill(db, n_jobs)
        print(f"  {n_jobs:,} jobs written in {time.perf_counter() - started:.1f} s")
        p50, worst = await _measure(db, n_jobs)
        print(f"  one follow-up's jobs, with the index:    p50 {p50:7.2f} ms, max {worst:7.2f} ms")
        async with db.transaction() as conn:
            await conn.execute(text("DROP INDEX ix_outbox_jobs_ordering_key_id"))
        p50, worst = await _measure(db, n_jobs)
        print(f"  one follow-up's jobs, without the index: p50 {p50:7.2f} ms, max {worst:7.2f} ms")
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=300_000)
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        migrate(url)
        print("SQLite")
        asyncio.run(run(url, args.jobs))
    if not args.postgres:
        return
    name = f"cht_interop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = args.pg.rsplit("/", 1)[0] + f"/{name}"
        migrate(url)
        print("PostgreSQL")
        asyncio.run(run(url, args.jobs))
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
