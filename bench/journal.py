"""The transaction log's own cost: CPU per row to build (redact, cap, shape) and to insert.

    .venv/bin/python bench/journal.py [--rows 4000] [--postgres] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Rows shaped like a single follow-up's (a ServiceRequest in, its Subscription out, four noted
properties) are built and written as the writer does (``journal/entries.py``, ``journal/store.py``)
on a fresh SQLite file (and a fresh PostgreSQL database, created and dropped here), in batches of
5, 50 and 200 (the writer batches up to 200 rows or 250 ms). Prints CPU microseconds per row
(this process and its SQLite thread: robust to other load on a shared machine) and wall time.
``bench/ltfu_http.py`` measures what it does to the follow-ups themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg

from cht_interop.db import Database, migrate
from cht_interop.journal import store
from cht_interop.journal.entries import BodyPolicy, RequestDone, Row, request_row

SERVICE_REQUEST = {
    "resourceType": "ServiceRequest",
    "status": "active",
    "intent": "order",
    "subject": {"reference": "Patient/cht-patient-1"},
    "requester": {"reference": "Organization/org-1"},
    "reasonCode": [{"text": "missed visit"}],
}
SUBSCRIPTION = {
    "resourceType": "Subscription",
    "id": "11",
    "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
    "status": "active",
    "reason": "follow up",
    "criteria": "Encounter?identifier=cht-patient-1",
    "channel": {
        "type": "rest-hook",
        "endpoint": "https://emr.example.org/fhir-callback",
        "payload": "application/fhir+json",
        "header": ["Content-Type: application/fhir+json"],
    },
}


def follow_up_request() -> RequestDone:
    sr = {**SERVICE_REQUEST, "identifier": [{"system": "urn:emr", "value": str(uuid.uuid4())}]}
    return RequestDone(
        transaction_id=str(uuid.uuid4()),
        started_at=datetime.now(UTC),
        duration_ms=3.0,
        client="interop-client",
        method="POST",
        path="/mediator/service-request",
        query="",
        status=201,
        request_body=orjson.dumps(sr),
        response_body=orjson.dumps(SUBSCRIPTION),
        exchanges=[],
        properties={
            "followUpId": str(uuid.uuid4()),
            "serviceRequestId": "10",
            "taskId": "12",
            "subscriptionId": "11",
        },
    )


async def run(name: str, url: str, rows: int) -> None:
    bodies = BodyPolicy(True, 16 * 1024)
    done = [follow_up_request() for _ in range(rows)]
    cpu = time.process_time()
    for d in done:
        request_row(d, bodies)
    print(f"[{name}] build: {(time.process_time() - cpu) / rows * 1e6:6.1f} µs CPU/row", flush=True)
    db = Database(url)
    try:
        for size in (5, 50, 200):
            batch_rows: list[Row] = [request_row(follow_up_request(), bodies) for _ in range(rows)]
            cpu, wall = time.process_time(), time.perf_counter()
            for start in range(0, rows, size):
                async with db.transaction() as conn:
                    await store.insert_rows(conn, batch_rows[start : start + size])
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(
                f"[{name}] insert, batches of {size:3d}: {cpu / rows * 1e6:6.1f} µs CPU/row, "
                f"{wall / rows * 1e6:6.1f} µs wall/row",
                flush=True,
            )
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="journal-bench-")) / "db.sqlite3"
    migrate(f"sqlite:///{path}")
    asyncio.run(run("sqlite", f"sqlite:///{path}", args.rows))
    if args.postgres:
        db_name = f"journal_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        url = args.pg.rsplit("/", 1)[0] + f"/{db_name}"
        try:
            migrate(url)
            asyncio.run(run("postgresql", url, args.rows))
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
