"""FHIR searches by identifier on an existing SQLite database, with memory-mapped reads on or off.

    .venv/bin/python bench/sqlite_reads.py DATABASE_FILE [--mmap-bytes N] [--cache-budget-bytes N]
        [--searches 2000]

``db/engine.py`` reads the database without mmap (``PRAGMA mmap_size`` 0) into page caches under one
budget (``PRAGMA soft_heap_limit``): this measures what either costs on a database of the size in
question (e.g. ``up``'s after ``bench/suite.py --only memory``,
or a copy of a deployment's, taken with ``VACUUM INTO``). Run it once per setting, back to back:
it prints the process CPU per search (all threads: aiosqlite's included) and the p50, for single
Patient and Task searches by identifier and for 100-identifier Task searches (``ltfu/lookups.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import time
from pathlib import Path

import cht_interop.db.engine as engine
import cht_interop.tables  # noqa: F401  (every table on the metadata)
from cht_interop.db import Database
from cht_interop.fhir.store import FhirStore
from cht_interop.ltfu.resources import FOLLOW_UP_SYSTEM


def identifiers(path: Path, rtype: str, system: str, count: int) -> list[str]:
    """``count`` identifier values of ``rtype`` in the database, picked at random (seeded)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT value FROM fhir_token WHERE res_type = ? AND param = 'identifier' AND system = ?",
            (rtype, system),
        ).fetchall()
    values = [value for (value,) in rows]
    return random.Random(7).sample(values, min(count, len(values)))


async def searches(store: FhirStore, rtype: str, tokens: list[str]) -> tuple[float, float]:
    """CPU ms per search and p50 ms, one search per token."""
    latencies: list[float] = []
    cpu = time.process_time()
    for token in tokens:
        started = time.perf_counter()
        await store.search(rtype, [("identifier", token), ("_count", "200")])
        latencies.append(time.perf_counter() - started)
    return 1000 * (time.process_time() - cpu) / len(tokens), 1000 * statistics.median(latencies)


async def run(path: Path, count: int) -> None:
    patients = [f"cht|{v}" for v in identifiers(path, "Patient", "cht", count)]
    tasks = [f"{FOLLOW_UP_SYSTEM}|{v}" for v in identifiers(path, "Task", FOLLOW_UP_SYSTEM, count)]
    batches = [",".join(tasks[n : n + 100]) for n in range(0, len(tasks), 100)]
    db = Database(f"sqlite:///{path}")
    store = FhirStore(db)
    try:
        for name, rtype, tokens in (
            ("Patient by identifier", "Patient", patients),
            ("Task by identifier", "Task", tasks),
            ("Task, 100 identifiers", "Task", batches),
        ):
            if tokens:
                cpu, p50 = await searches(store, rtype, tokens)
                print(f"{name:24} {len(tokens):6} searches: CPU {cpu:6.3f} ms each, p50 {p50:6.3f} ms")
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("database", type=Path, help="a cht-interop SQLite database file (only read)")
    parser.add_argument("--mmap-bytes", type=int, default=engine.SQLITE_MMAP_BYTES, help="PRAGMA mmap_size")
    parser.add_argument(
        "--cache-budget-bytes",
        type=int,
        default=engine.SQLITE_HEAP_LIMIT_BYTES,
        help="PRAGMA soft_heap_limit: every connection's page cache together",
    )
    parser.add_argument("--searches", type=int, default=2000, help="single searches of each kind")
    args = parser.parse_args()
    # read by each new connection's pragmas
    engine.SQLITE_MMAP_BYTES = args.mmap_bytes
    engine.SQLITE_HEAP_LIMIT_BYTES = args.cache_budget_bytes
    size = args.database.stat().st_size / 2**20
    budget = args.cache_budget_bytes
    print(f"{args.database} ({size:,.0f} MiB), mmap_size {args.mmap_bytes:,}, cache budget {budget:,}")
    asyncio.run(run(args.database, args.searches))


if __name__ == "__main__":
    main()
