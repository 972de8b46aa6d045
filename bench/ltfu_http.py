"""Single follow-up requests over real HTTP: ``cht-interop serve`` in its own process, clients here.

    .venv/bin/python bench/ltfu_http.py [--postgres] [--requests 2000] [--concurrency 8 16 32]

What a facility's EMR sees: the server runs as it does in production (uvicorn, one process, no
outbox worker), the load comes from another process over loopback, so the client's own cost is
not charged to the server (``bench/ltfu.py`` drives the app in-process through ASGI instead).
Patients and the requester are registered over HTTP first (not timed). Prints, per concurrency,
follow-ups started per second, the p50/p99 latency of ``POST /mediator/service-request`` and the
server's CPU time per follow-up (Linux /proc; the figure least disturbed by other load; with
SQLite the server cannot use more than about one core).
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

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ltfu import AUTH, patient, register_requester, service_request
from tests.support.live import free_port


async def seed(client: httpx.AsyncClient, count: int, org: str) -> list[str]:
    """The requester and ``count`` patients, over HTTP (not timed)."""
    await register_requester(client, org)
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


async def one_client(client: httpx.AsyncClient, org: str, todo: list[str], latencies: list[float]) -> None:
    while todo:
        p = todo.pop()
        t = time.perf_counter()
        res = await client.post("/mediator/service-request", json=service_request(p, org))
        latencies.append(time.perf_counter() - t)
        if res.status_code != 201:
            raise RuntimeError(f"{res.status_code} {res.text[:200]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): robust to other load on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(base: str, args: argparse.Namespace, name: str, server_pid: int) -> None:
    limits = httpx.Limits(
        max_connections=max(args.concurrency), max_keepalive_connections=max(args.concurrency)
    )
    async with httpx.AsyncClient(base_url=base, auth=AUTH, timeout=120, limits=limits) as client:
        org = f"org-{name}"
        patients = iter(await seed(client, args.requests * len(args.concurrency) + 50, org))
        for _ in range(50):  # warm up: first connections, caches
            (
                await client.post("/mediator/service-request", json=service_request(next(patients), org))
            ).raise_for_status()
        for concurrency in args.concurrency:
            todo = [next(patients) for _ in range(args.requests)]
            latencies: list[float] = []

            cpu0, t0 = cpu_seconds(server_pid), time.perf_counter()
            await asyncio.gather(*(one_client(client, org, todo, latencies) for _ in range(concurrency)))
            dt = time.perf_counter() - t0
            cpu = cpu_seconds(server_pid) - cpu0
            q = statistics.quantiles(latencies, n=100)
            print(
                f"[{name}] {concurrency:3d} clients: {args.requests / dt:6,.0f} follow-ups/s   "
                f"p50 {q[49] * 1000:6.1f} ms   p99 {q[98] * 1000:6.1f} ms   "
                f"server CPU {cpu * 1000 / args.requests:5.2f} ms/follow-up",
                flush=True,
            )


def run(name: str, database_url: str, args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="ltfu-http-bench-"))
    port = free_port()
    env = {
        "DATA_DIR": str(data),
        "DATABASE_URL": database_url,
        "INTEROP_CLIENT_PASSWORD": AUTH[1],
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }
    env = {k: v for k, v in env.items() if v}
    base = f"http://127.0.0.1:{port}"
    with (data / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "cht_interop", "serve", "--port", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(f"{base}/health/ready", server)
            asyncio.run(drive(base, args, name, server.pid))
        finally:
            server.terminate()
            server.wait(timeout=30)


def wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if server.poll() is not None:
            raise RuntimeError("the server exited at start")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not get ready")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", action="store_true", help="also run on PostgreSQL")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args()
    run("sqlite", "", args)  # the embedded default: SQLite in the data dir
    if args.postgres:
        db_name = f"ltfu_http_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        try:
            run("postgresql", args.pg.rsplit("/", 1)[0] + f"/{db_name}", args)
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
