"""Embedded FHIR store throughput and latency (in-process: calls FhirStore directly, no HTTP).

    .venv/bin/python bench/fhir_store.py [--postgres] [--quick]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Prints, for SQLite (and PostgreSQL with --postgres, on a database created and dropped here):
- creates/s, one create per transaction, and in transaction Bundles of 1,000 creates;
- search p50/p99 by identifier with N Patients stored (100,000; 10,000 with --quick);
- LTFU-shaped transactions (per follow-up: the client's ServiceRequest, validated, and our own
  Subscription and Task as trusted entries, plus one outbox job): p50 of a 4-follow-up
  transaction, and one transaction of 10,000 follow-ups (30,000 resources; 2,000 with --quick);
- p50 write latency (create of an Encounter) with 10 vs M active Subscriptions (100,000; 10,000
  with --quick) and their ratio, measured on two stores of equal size (M Subscriptions each; in the
  first, all but 10 are ``off``), write samples alternating between them. Subscriptions are
  created through the store like any client would (transaction Bundles of ``requested`` rest-hook
  Subscriptions, activated as version 2).
Validation (fhir.resources) and Subscription matching run on every write, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

import cht_interop.tables  # noqa: F401  (every table on the metadata)
from cht_interop.db import Database, migrate
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import NewJob
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


def _off_subscription(n: int, tag: str) -> dict[str, Any]:
    return {**_subscription(n, tag), "status": "off"}


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


def _encounter(value: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "identifier": [{"system": "cht", "value": value}],
    }


async def _timed_create(store: FhirStore) -> float:
    t0 = time.perf_counter()
    await store.create(_encounter(f"nomatch-{uuid.uuid4().hex}"))
    return time.perf_counter() - t0


def _follow_ups(patients: list[str], org: str) -> tuple[dict[str, Any], list[NewJob], set[str]]:
    """A transaction Bundle, jobs and trusted fullUrls as the LTFU mediator writes them."""
    entries: list[dict[str, Any]] = []
    jobs: list[NewJob] = []
    trusted: set[str] = set()
    authored = "2026-01-05T10:00:00.000Z"
    for pid in patients:
        sr_urn, sub_urn, task_urn = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
        trusted.update((sub_urn, task_urn))
        follow_up = str(uuid.uuid4())
        service_request = {
            "resourceType": "ServiceRequest",
            "intent": "order",
            "status": "active",
            "subject": {"reference": f"Patient/{pid}", "identifier": {"system": "cht", "value": pid}},
            "requester": {"reference": f"Organization/{org}", "display": "Clinic"},
            "reasonCode": [{"text": "Missed ART refill"}],
            "authoredOn": authored,
        }
        subscription = {
            "resourceType": "Subscription",
            "status": "active",
            "reason": "LTFU follow-up",
            "criteria": f"Encounter?identifier={pid}",
            "channel": {
                "type": "rest-hook",
                "endpoint": "https://emr.example.org/callback",
                "payload": "application/fhir+json",
                "header": ["Content-Type: application/fhir+json"],
            },
        }
        task = {
            "resourceType": "Task",
            "identifier": [{"system": "urn:bench:follow-up", "value": follow_up}],
            "basedOn": [{"reference": sr_urn}],
            "status": "requested",
            "intent": "order",
            "code": {"coding": [{"system": "urn:bench:task", "code": "ltfu"}], "text": "Follow up"},
            "focus": {"reference": sr_urn},
            "for": {"reference": f"Patient/{pid}"},
            "requester": {"reference": f"Organization/{org}"},
            "authoredOn": authored,
            "lastModified": authored,
            "input": [{"type": {"text": "subscription"}, "valueReference": {"reference": sub_urn}}],
        }
        for urn, resource in ((sr_urn, service_request), (sub_urn, subscription), (task_urn, task)):
            rtype = resource["resourceType"]
            entries.append(
                {"fullUrl": urn, "resource": resource, "request": {"method": "POST", "url": rtype}}
            )
        jobs.append(
            NewJob(
                kind="bench.record",
                target="https://cht.example.org",
                payload={"action": "follow-up", "follow_up": follow_up},
                ordering_key=f"follow-up:{follow_up}",
            )
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, jobs, trusted


async def _ltfu_shaped(store: FhirStore, small: int, big: int) -> None:
    org = (await store.create({"resourceType": "Organization", "name": "Clinic"})).stored.id
    count = 4 * small + big
    for start in range(0, count, BUNDLE):
        patients = [
            {"resourceType": "Patient", "id": f"ltfu-{n}", "identifier": [{"system": "cht", "value": f"{n}"}]}
            for n in range(start, min(count, start + BUNDLE))
        ]
        await store.process_bundle(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"resource": p, "request": {"method": "PUT", "url": f"Patient/{p['id']}"}}
                    for p in patients
                ],
            }
        )
    ids = iter(f"ltfu-{n}" for n in range(count))
    lat = []
    for _ in range(small):
        bundle, jobs, trusted = _follow_ups([next(ids) for _ in range(4)], org)
        t0 = time.perf_counter()
        await store.process_bundle(bundle, jobs=jobs, trusted=trusted)
        lat.append(time.perf_counter() - t0)
    print(
        f"LTFU-shaped transaction of 4 follow-ups (12 resources, 4 jobs; {small} samples): "
        f"p50 {_pct(lat, 0.5):.2f} ms, p99 {_pct(lat, 0.99):.2f} ms"
    )
    bundle, jobs, trusted = _follow_ups([next(ids) for _ in range(big)], org)
    t0 = time.perf_counter()
    await store.process_bundle(bundle, jobs=jobs, trusted=trusted)
    print(
        f"LTFU-shaped transaction of {big} follow-ups ({3 * big} resources): {time.perf_counter() - t0:.2f} s"
    )


async def run(name: str, make_url: Callable[[str], str], opts: dict[str, int]) -> None:
    n_resources, n_subs, singles, samples = (opts[k] for k in ("n_resources", "n_subs", "singles", "samples"))
    url = make_url("main")
    migrate(url)
    db = Database(url)
    store = FhirStore(db)
    try:
        print(f"\n== {name} ==")
        t0 = time.perf_counter()
        for n in range(singles):
            await store.create(_patient(n, "single"))
        dt = time.perf_counter() - t0
        print(f"creates/s, one per transaction ({singles} creates):        {singles / dt:8.0f}")

        bundles = 5
        dt = await _load(store, _patient, bundles * BUNDLE, "bundled")
        print(
            f"creates/s, transaction Bundles of {BUNDLE} ({bundles} Bundles):  {bundles * BUNDLE / dt:8.0f}"
        )

        remaining = max(0, n_resources - singles - bundles * BUNDLE)
        dt = await _load(store, _patient, remaining, "bulk")
        print(f"  (loaded {remaining} more Patients in {dt:.1f} s: {remaining / dt:.0f}/s)")
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
        await _ltfu_shaped(store, opts["ltfu_small"], opts["ltfu_big"])
    finally:
        await db.dispose()

    # Two stores, one with 10 and one with n_subs active Subscriptions; write samples alternate
    # between them so that load from elsewhere on the machine hits both alike.
    few_url, many_url = make_url("few"), make_url("many")
    migrate(few_url)
    migrate(many_url)
    few_db, many_db = Database(few_url), Database(many_url)
    few_store, many_store = FhirStore(few_db), FhirStore(many_db)
    try:
        # Both stores hold n_subs Subscriptions, so they are the same size; they differ only in how
        # many are active (the "few" store's others are "off").
        await _load(few_store, _off_subscription, n_subs - 10, "off")
        await _load(few_store, _subscription, 10, "sub")
        dt = await _load(many_store, _subscription, n_subs, "sub")
        print(
            f"  (created {n_subs} Subscriptions through transaction Bundles in {dt:.1f} s: "
            f"{n_subs / dt:.0f}/s)"
        )
        for d in (few_db, many_db):
            await _analyze(d)
        few_lat: list[float] = []
        many_lat: list[float] = []
        for i in range(samples + 50):
            a, b = await _timed_create(few_store), await _timed_create(many_store)
            if i >= 50:  # warm-up
                few_lat.append(a)
                many_lat.append(b)
        few, many = statistics.median(few_lat), statistics.median(many_lat)
        print(
            f"p50 write latency: {few * 1000:.2f} ms with 10 active Subscriptions, {many * 1000:.2f} ms with "
            f"{n_subs}; ratio {many / few:.2f} (both stores hold {n_subs} Subscriptions; samples interleaved)"
        )
        # one matching write, to show a notification job really is produced at this scale
        t0 = time.perf_counter()
        matched = await many_store.create(_encounter(f"sub-{n_subs // 2}"))
        elapsed = time.perf_counter() - t0
        async with many_db.connect() as conn:
            jobs = await outbox.list_jobs(conn, kind="fhir.subscription-notification", limit=5)
        assert [j.payload["resource_id"] for j in jobs] == [matched.stored.id], jobs
        print(
            f"  (a matching write among {n_subs} Subscriptions, its one job enqueued: "
            f"{elapsed * 1000:.2f} ms)"
        )
    finally:
        await few_db.dispose()
        await many_db.dispose()


async def _analyze(db: Database) -> None:
    """Fresh planner statistics after the bulk load, as autovacuum / a DBA would have them."""
    if db.is_postgresql:
        async with db.engine.connect() as conn:
            raw = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await raw.exec_driver_sql("ANALYZE")
    else:
        async with db.transaction() as conn:
            await conn.exec_driver_sql("ANALYZE")


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
        "ltfu_small": 300,
        "ltfu_big": 2000 if args.quick else 10_000,
    }
    print("FHIR store bench: in-process (FhirStore called directly, no HTTP); validation and Subscription")
    print("matching on every write. Machine: shared 2-core box; figures vary with other load.")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run("SQLite (WAL, file)", lambda tag: f"sqlite:///{Path(tmp) / tag}.sqlite3", opts))
    if args.postgres:
        created: list[str] = []

        def make_pg(tag: str) -> str:
            name = f"cht_interop_bench_{tag}_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            created.append(name)
            return str(args.pg.rsplit("/", 1)[0] + f"/{name}")

        try:
            asyncio.run(run("PostgreSQL", make_pg, opts))
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                for name in created:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"\ntotal run time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
