"""Is the server still answering others while it works through the biggest request it accepts?

    .venv/bin/python bench/fair_loop.py [--postgres] [--transaction N] [--max-entries M] [--repeat R]
                                        [--list 10000]

``cht-interop serve`` runs in its own process (SQLite by default); this process first registers a
requester and pushes patients (not timed), then sends, one at a time, a ``/fhir`` transaction of
``--transaction`` Patient creates (by default the biggest the server takes: its
``FHIR_TRANSACTION_MAX_ENTRIES`` default on SQLite, 100,000 on PostgreSQL; ``--max-entries`` sets
that limit for the server, e.g. 0 for none) and an LTFU list of ``--list`` ServiceRequests (answered 202:
checked and staged before the answer). ``--repeat R`` sends each R times, one after the other, the
list each time for patients of its own (a 10,000-entry list's ~1.5 s gives 10-16 others' answers:
too few for a p99; lists after the first also meet the staged keys of those before, as a server
writing lists in the background does). While each big request is in flight, one client asks
``/health/live`` every 20 ms (what a Kubernetes liveness probe does) and another starts single
follow-ups one after the other (what the other facilities do). Prints the big request's time,
the p50 / p99 / max latency of both, ``serve``'s CPU meanwhile (per entry of the big requests,
the probes' and follow-ups' included) and the load average; the targets: ``/health/live`` p99
<= 100 ms, follow-ups p99 <= 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ltfu import AUTH, patient, register_requester, service_request
from bench.ltfu_http import wait_ready
from tests.support.live import free_port

from cht_interop.settings import SQLITE_TRANSACTION_MAX_ENTRIES

PROBE_EVERY_SECONDS = 0.02


async def push_patients(client: httpx.AsyncClient, count: int) -> list[str]:
    """``count`` CHT patients in the FHIR store, in transactions of 500 (not timed)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for start in range(0, count, 500):
        entries = [
            {"resource": patient(i), "request": {"method": "POST", "url": "Patient"}}
            for i in ids[start : start + 500]
        ]
        res = await client.post(
            "/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
        )
        res.raise_for_status()
    return ids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(name: str, latencies: list[float]) -> str:
    if len(latencies) < 2:
        return f"{name}: {len(latencies)} answers"
    q = statistics.quantiles(latencies, n=100, method="inclusive")  # never past the largest
    return (
        f"{name}: {len(latencies):5d} answers  p50 {q[49] * 1000:7.1f} ms  p99 {q[98] * 1000:7.1f} ms  "
        f"max {max(latencies) * 1000:7.1f} ms"
    )


async def probe_health(base: str, stop: asyncio.Event, out: list[float]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        while not stop.is_set():
            t = time.perf_counter()
            (await client.get("/health/live")).raise_for_status()
            out.append(time.perf_counter() - t)
            await asyncio.sleep(PROBE_EVERY_SECONDS)


async def other_follow_ups(
    base: str, org: str, patients: list[str], stop: asyncio.Event, out: list[float], refused: list[int]
) -> None:
    """Single follow-ups one after the other; a non-201 answer is counted (``refused``), not timed."""
    async with httpx.AsyncClient(base_url=base, auth=AUTH, timeout=60) as client:
        while not stop.is_set() and patients:
            t = time.perf_counter()
            res = await client.post("/mediator/service-request", json=service_request(patients.pop(), org))
            if res.status_code == 201:
                out.append(time.perf_counter() - t)
            else:
                refused.append(res.status_code)
            await asyncio.sleep(PROBE_EVERY_SECONDS)


async def while_big(
    base: str,
    org: str,
    others: list[str],
    label: str,
    path: str,
    bodies: list[bytes],
    *,
    entries: int,
    server_pid: int,
) -> None:
    """Send the big requests (``bodies``, one after the other: more samples of a short one);
    probe health and start follow-ups meanwhile; print the figures of them all."""
    health: list[float] = []
    follow_ups: list[float] = []
    refused: list[int] = []
    stop = asyncio.Event()
    probes = [
        asyncio.create_task(probe_health(base, stop, health)),
        asyncio.create_task(other_follow_ups(base, org, others, stop, follow_ups, refused)),
    ]
    await asyncio.sleep(0.3)  # the probes are running before the big request starts
    health.clear()
    follow_ups.clear()
    refused.clear()
    async with httpx.AsyncClient(base_url=base, auth=AUTH, timeout=600) as client:
        cpu = cpu_seconds(server_pid)
        t = time.perf_counter()
        for body in bodies:
            res = await client.post(path, content=body, headers={"content-type": "application/fhir+json"})
        took = (time.perf_counter() - t) / len(bodies)
        cpu = cpu_seconds(server_pid) - cpu
    stop.set()
    await asyncio.gather(*probes)
    times = len(bodies)
    each = f" each, {times} one after the other" if times > 1 else ""
    print(
        f"{label}: HTTP {res.status_code} in {took:.1f} s{each} ({len(bodies[0]) / 1e6:.1f} MB)", flush=True
    )
    print("  " + summary("/health/live        ", health), flush=True)
    print("  " + summary("other follow-ups    ", follow_ups), flush=True)
    per_entry = cpu / (entries * times) * 1000
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"  serve CPU {cpu:.1f} s ({per_entry:.3f} ms per entry); load average {load}", flush=True)
    if refused:
        print(f"  other follow-ups refused: {len(refused)} ({sorted(set(refused))})", flush=True)


async def drive(base: str, args: argparse.Namespace, transaction: int, server_pid: int) -> None:
    org = "org-fair"
    async with httpx.AsyncClient(base_url=base, auth=AUTH, timeout=600) as client:
        await register_requester(client, org)
        others = await push_patients(client, 2000)
        # each repeat of the list names patients of its own: a repeat is a first list again,
        # not one whose every entry is a duplicate
        listed = [await push_patients(client, args.list) for _ in range(args.repeat)] if args.list else []
    if transaction:
        entries = [
            {"resource": patient(str(uuid.uuid4())), "request": {"method": "POST", "url": "Patient"}}
            for _ in range(transaction)
        ]
        body = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        label = f"/fhir transaction of {transaction:,} creates"
        await while_big(
            base,
            org,
            others,
            label,
            "/fhir",
            [body] * args.repeat,
            entries=transaction,
            server_pid=server_pid,
        )
    if args.list:
        bodies = []
        for patients in listed:
            items: list[dict[str, Any]] = [{"resource": service_request(p, org)} for p in patients]
            bodies.append(orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": items}))
        label = f"LTFU list of {args.list:,} follow-ups"
        await while_big(
            base,
            org,
            others,
            label,
            "/mediator/service-request",
            bodies,
            entries=args.list,
            server_pid=server_pid,
        )


def biggest_transaction(name: str, args: argparse.Namespace) -> int:
    """``--transaction``, else the biggest transaction the server takes (100,000 when unlimited)."""
    if args.transaction is not None:
        return int(args.transaction)
    limit = args.max_entries
    if limit is None and name == "sqlite":
        limit = SQLITE_TRANSACTION_MAX_ENTRIES
    return int(limit) if limit else 100_000


def run(name: str, database_url: str, args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="fair-loop-bench-"))
    port = free_port()
    env = {
        "DATA_DIR": str(data),
        "DATABASE_URL": database_url,
        "INTEROP_CLIENT_PASSWORD": AUTH[1],
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "false",
        "FHIR_TRANSACTION_MAX_ENTRIES": "" if args.max_entries is None else str(args.max_entries),
    }
    env = {k: v for k, v in env.items() if v}
    base = f"http://127.0.0.1:{port}"
    print(f"[{name}]", flush=True)
    with (data / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "cht_interop", "serve", "--port", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(f"{base}/health/ready", server)
            asyncio.run(drive(base, args, biggest_transaction(name, args), server.pid))
        finally:
            server.terminate()
            server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", action="store_true", help="also run on PostgreSQL")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--transaction", type=int, help="creates in the big transaction")
    parser.add_argument("--max-entries", type=int, help="the server's FHIR_TRANSACTION_MAX_ENTRIES")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="send the transaction (and lists of other patients) this many times, one after the other",
    )
    parser.add_argument("--list", type=int, default=10_000, help="entries in the big LTFU list")
    args = parser.parse_args()
    run("sqlite", "", args)
    if args.postgres:
        db_name = f"fair_loop_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        try:
            run("postgresql", args.pg.rsplit("/", 1)[0] + f"/{db_name}", args)
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
