"""What the console's follow-up pages cost with many follow-ups stored (in-process, no HTTP).

    .venv/bin/python bench/console.py [--follow-ups 100000] [--postgres]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Loads N follow-up Tasks (default 100,000; as the mediator writes them: our identifier, status,
outcome, patient, requester, authoredOn over 30 days) into a fresh embedded store, then prints
the p50 and max of: the first page of the list (50 rows), a page 20 pages deep (reached through
the cursor, as the Next link does), the filtered first pages (status, outcome, requester,
patient, a date range), the dashboard's follow-up counts, and one follow-up's page data.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

import cht_interop.tables  # noqa: F401  (every table on the metadata)
from cht_interop.console import followups
from cht_interop.db import Database, migrate
from cht_interop.fhir.inprocess import InProcessFhirClient
from cht_interop.fhir.store import FhirStore
from cht_interop.ltfu import resources as R

CHUNK = 2000
PATIENTS = 1000
ORGS = 5
OUTCOMES = list(R.OUTCOME_LABELS)


def _task(n: int, patients: list[str], orgs: list[str], start: datetime) -> dict[str, Any]:
    status = ("accepted", "completed", "completed", "failed", "accepted")[n % 5]
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [{"system": R.FOLLOW_UP_SYSTEM, "value": str(uuid.uuid4())}],
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": R.TASK_CODE_SYSTEM, "code": R.TASK_CODE}]},
        "for": {"reference": f"Patient/{patients[n % len(patients)]}"},
        "requester": {"reference": f"Organization/{orgs[n % len(orgs)]}"},
        "authoredOn": (start + timedelta(seconds=n * 26)).isoformat().replace("+00:00", "Z"),
    }
    if status == "completed":
        code = OUTCOMES[n % len(OUTCOMES)]
        task["businessStatus"] = {"coding": [{"system": R.OUTCOME_SYSTEM, "code": code}]}
    return task


async def _bundle(store: FhirStore, resources: list[dict[str, Any]]) -> list[str]:
    entries = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": r,
            "request": {"method": "POST", "url": r["resourceType"]},
        }
        for r in resources
    ]
    out = await store.process_bundle(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries},
        trusted=[e["fullUrl"] for e in entries],
    )
    return [R.location_id(e["response"]["location"], resources[0]["resourceType"]) for e in out["entry"]]


async def _timed(label: str, work: Callable[[], Awaitable[Any]], samples: int) -> None:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        await work()
        times.append((time.perf_counter() - t0) * 1000)
    print(f"  {label:<52} p50 {statistics.median(times):7.1f} ms   max {max(times):7.1f} ms")


async def run(name: str, url: str, count: int, samples: int) -> None:
    migrate(url)
    db = Database(url)
    store = FhirStore(db)
    fhir = InProcessFhirClient(store)
    try:
        print(f"\n== {name}: {count} follow-ups ==")
        patients = await _bundle(
            store,
            [
                {"resourceType": "Patient", "identifier": [{"system": "cht", "value": f"p-{n}"}]}
                for n in range(PATIENTS)
            ],
        )
        orgs = await _bundle(
            store, [{"resourceType": "Organization", "name": f"Facility {n}"} for n in range(ORGS)]
        )
        start = datetime.now(UTC) - timedelta(days=30)
        t0 = time.perf_counter()
        for first in range(0, count, CHUNK):
            await _bundle(
                store, [_task(n, patients, orgs, start) for n in range(first, min(count, first + CHUNK))]
            )
        print(f"  (loaded in {time.perf_counter() - t0:.0f} s)")
        if db.dialect == "postgresql":
            async with db.transaction() as conn:
                await conn.exec_driver_sql("ANALYZE")

        none = followups.Filters()
        await _timed("first page (50)", lambda: followups.page(fhir, none, cursor=None, size=50), samples)
        cursor = None
        for _ in range(19):
            cursor = (await followups.page(fhir, none, cursor=cursor, size=50)).next_cursor
        deep = cursor
        await _timed(
            "page 20 (through the cursor)", lambda: followups.page(fhir, none, cursor=deep, size=50), samples
        )
        today = datetime.now(UTC).date()
        cases = {
            "status=completed": followups.Filters(status="completed"),
            "outcome=died": followups.Filters(outcome="died"),
            "requester": followups.Filters(requester=orgs[1]),
            "patient (CHT id)": followups.Filters(patient="p-7"),
            "a 3-day range": followups.Filters(
                since=(today - timedelta(days=10)).isoformat(), until=(today - timedelta(days=8)).isoformat()
            ),
        }
        for label, f in cases.items():
            await _timed(
                f"first page, {label}", lambda f=f: followups.page(fhir, f, cursor=None, size=50), samples
            )
        await _timed(
            "dashboard counts (15 count searches)", lambda: followups.summary(fhir), max(3, samples // 4)
        )
        some = (await followups.page(fhir, none, cursor=None, size=1)).rows[0].task_id
        await _timed("one follow-up's resources", lambda: followups.load(fhir, some), samples)
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--follow-ups", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    if args.postgres:
        name = f"bench_console_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            asyncio.run(
                run("PostgreSQL", args.pg.rsplit("/", 1)[0] + f"/{name}", args.follow_ups, args.samples)
            )
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        asyncio.run(run("SQLite", url, args.follow_ups, args.samples))


if __name__ == "__main__":
    main()
