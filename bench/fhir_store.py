"""Embedded FHIR store throughput and latency (in-process: calls FhirStore directly, no HTTP).

    .venv/bin/python bench/fhir_store.py [--postgres] [--quick]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Prints, for SQLite (and PostgreSQL with --postgres, on a database created and dropped here):
- creates/s, one create per transaction, and in transaction Bundles of 1,000 creates;
- search p50/p99 by identifier with N Patients stored (100,000; 10,000 with --quick);
- p50 write latency (create of an Encounter) with 10 vs M active Subscriptions (100,000; 10,000
  with --quick) and their ratio. Subscriptions are created through the store like any client would
  (transaction Bundles of ``requested`` rest-hook Subscriptions, activated as version 2).
Validation (fhir.resources) and Subscription matching run on every write, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

import cht_interop.tables  # noqa: F401  (every table on the metadata)
from cht_interop.db import Database, migrate
from cht_interop.delivery import outbox
from cht_interop.fhir.store import FhirStore

BUNDLE = 1000


def _patient(n: int, tag: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "cht", "value": f"{tag}-{n}"}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1990-04-01",
    }


def _subscription(n: int, tag: str) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "bench",
        "criteria": f"Encounter?identifier={tag}-{n}",
        "channel": {
            "type": "rest-hook",
            "endpoint": "https://callback.example/hook",
            "payload": "application/fhir+json",
        },
    }


def _bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources
        ],
    }


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def _load(store: FhirStore, make: Any, count: int, tag: str) -> float:
    t0 = time.perf_counter()
    for start in range(0, count, BUNDLE):
        await store.process_bundle(_bundle([make(n, tag) for n in range(start, min(count, start + BUNDLE))]))
    return time.perf_counter() - t0


async def _write_latencies(store: FhirStore, n: int) -> list[float]:
    out = []
    for _ in range(n):
        enc = {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "identifier": [{"system": "cht", "value": f"nomatch-{uuid.uuid4().hex}"}],
        }
        t0 = time.perf_counter()
        await store.create(enc)
        out.append(time.perf_counter() - t0)
    return out


async def run(name: str, url: str, *, n_resources: int, n_subs: int, singles: int, samples: int) -> None:
    migrate(url)
    db = Database(url)
    store = FhirStore(db)
    try:
        print(f"\n== {name} ==")
        t0 = time.perf_counter()
        for n in range(singles):
            await store.create(_patient(n, "single"))
        dt = time.perf_counter() - t0
        print(f"creates/s, one per transaction ({singles} creates):      {singles / dt:8.0f}")

        bundles = 5
        dt = await _load(store, _patient, bundles * BUNDLE, "bundled")
        print(f"creates/s, transaction Bundles of {BUNDLE} ({bundles} Bundles): {bundles * BUNDLE / dt:8.0f}")

        remaining = max(0, n_resources - singles - bundles * BUNDLE)
        dt = await _load(store, _patient, remaining, "bulk")
        print(f"(loaded {remaining} more Patients in {dt:.1f} s: {remaining / dt:.0f}/s)")
        lat = []
        for i in range(samples):
            value = f"bulk-{(i * 7919) % remaining}"
            t0 = time.perf_counter()
            bundle = await store.search("Patient", [("identifier", f"cht|{value}")])
            lat.append(time.perf_counter() - t0)
            assert bundle["total"] == 1, bundle
        print(
            f"search by identifier, {n_resources} Patients stored ({samples} searches): "
            f"p50 {_pct(lat, 0.5):.2f} ms, p99 {_pct(lat, 0.99):.2f} ms"
        )

        await _load(store, _subscription, 10, "few")
        await _write_latencies(store, 20)  # warm-up
        few = statistics.median(await _write_latencies(store, samples))
        dt = await _load(store, _subscription, n_subs - 10, "many")
        print(f"(created {n_subs - 10} more Subscriptions in {dt:.1f} s: {(n_subs - 10) / dt:.0f}/s)")
        await _write_latencies(store, 20)
        many = statistics.median(await _write_latencies(store, samples))
        print(
            f"p50 write latency: {few * 1000:.2f} ms with 10 active Subscriptions, {many * 1000:.2f} ms with "
            f"{n_subs}; ratio {many / few:.2f}"
        )
        # one matching write, to show a notification job is really produced at this scale
        t0 = time.perf_counter()
        matched = await store.create(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "identifier": [{"system": "cht", "value": f"many-{n_subs // 2}"}],
            }
        )
        elapsed = time.perf_counter() - t0
        async with db.connect() as conn:
            jobs = await outbox.list_jobs(conn, kind="fhir.subscription-notification", limit=5)
        assert [j.payload["resource_id"] for j in jobs] == [matched.stored.id], jobs
        print(
            f"(a matching write among {n_subs} Subscriptions, its one job enqueued: {elapsed * 1000:.2f} ms)"
        )
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", action="store_true", help="also run on PostgreSQL")
    parser.add_argument(
        "--quick", action="store_true", help="10,000 resources/Subscriptions instead of 100,000"
    )
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN")
    args = parser.parse_args()
    scale = 10_000 if args.quick else 100_000
    opts = {
        "n_resources": scale,
        "n_subs": scale,
        "singles": 500 if args.quick else 1000,
        "samples": 300 if args.quick else 1000,
    }
    print("FHIR store bench: in-process (FhirStore called directly, no HTTP); validation and Subscription")
    print("matching on every write. Machine: shared 2-core box; figures vary with other load.")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run("SQLite (WAL, file)", f"sqlite:///{Path(tmp) / 'bench.sqlite3'}", **opts))
    if args.postgres:
        name = f"cht_interop_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            asyncio.run(run("PostgreSQL", args.pg.rsplit("/", 1)[0] + f"/{name}", **opts))
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"\ntotal run time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
