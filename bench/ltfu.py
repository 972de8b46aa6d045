"""LTFU mediator throughput: follow-ups accepted per second and a 10,000-patient list end to end.

    .venv/bin/python bench/ltfu.py [--postgres] [--singles 1000] [--bundles 5] [--list 10000]
        [--concurrency 8] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Drives the real app (auth, JSON, validation, embedded FHIR store, outbox) in this process,
against a fresh database per backend (SQLite file; PostgreSQL database created and dropped here).
Patients and requesters are registered first (not timed). Prints:
- follow-ups/s for single ``POST /mediator/service-request`` (``--concurrency`` clients at once),
  twice: posted as direct ASGI calls (the app's own cost), then through httpx's ASGI transport
  (adds that client's cost to the same event loop); ``bench/ltfu_http.py`` serves the app as its
  own process over real HTTP;
- follow-ups/s for 1,000-entry LTFU list Bundles (httpx's ASGI transport, from here on);
- for one ``--list``-entry list: the time to accept it (a list over ``LTFU_LIST_SYNC_MAX`` is
  checked and committed, answered 202, and written in the background: the time until its status
  says every follow-up is written is printed too, then what reading that final status costs), and
  the time until every CHT submission is done (outbox worker running, CHT test double served on
  loopback over real HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.cht_double import ChtDouble
from tests.support.live import serve_in_thread

import cht_interop.tables  # noqa: F401  (every table on the metadata)
from cht_interop.app import create_app
from cht_interop.db import migrate
from cht_interop.delivery.worker import OutboxWorker
from cht_interop.runner import freeze_startup_heap
from cht_interop.settings import Settings

AUTH = ("interop-client", "bench-password")
CONNECTION = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "hl7-fhir-rest",
}


def patient(cht_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "cht", "value": cht_id}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1990-04-01",
    }


def service_request(cht_id: str, org: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "intent": "order",
        "status": "active",
        "subject": {"reference": f"Patient/{cht_id}"},
        "requester": {"reference": f"Organization/{org}"},
        "reasonCode": [{"text": "Missed ART refill"}],
    }


Post = Callable[[str, Any], Awaitable[tuple[int, bytes]]]


class AsgiCaller:
    """POSTs JSON straight into the ASGI app: one scope, the body in one message, the answer
    collected. The app does all it does behind a server (auth, routing, JSON, validation, store);
    what is left out is a client library's own work in this process (httpx's ASGI transport costs
    ~0.3-0.5 ms of this event loop per request here: URL and cookie handling) and a server's HTTP
    parsing (``bench/ltfu_http.py`` measures a served process over real HTTP)."""

    def __init__(self, app: Any, auth: tuple[str, str]) -> None:
        self.app = app
        self.authorization = b"Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode())

    async def post(self, path: str, payload: Any) -> tuple[int, bytes]:
        body = orjson.dumps(payload)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"bench"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"authorization", self.authorization),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("bench", 80),
        }
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


def _httpx_post(client: httpx.AsyncClient) -> Post:
    async def post(path: str, payload: Any) -> tuple[int, bytes]:
        res = await client.post(path, json=payload)
        return res.status_code, res.content

    return post


async def register_requester(client: httpx.AsyncClient, org: str) -> None:
    """The requesting system: its callback Endpoint and its Organization (identifier ``org``)."""
    ep = await client.post(
        "/mediator/endpoint",
        json={
            "resourceType": "Endpoint",
            "identifier": [{"value": f"cb-{org}"}],
            "connectionType": CONNECTION,
            "address": "https://emr.example.org/callback",
        },
    )
    ep.raise_for_status()
    org_res = await client.post(
        "/mediator/organization",
        json={
            "identifier": [{"value": org}],
            "name": org,
            "endpoint": [{"reference": f"Endpoint/{ep.json()['id']}"}],
        },
    )
    org_res.raise_for_status()


async def seed(client: httpx.AsyncClient, app: Any, count: int, org: str) -> list[str]:
    """One requester and ``count`` patients (patients through the store in bundles: setup, not timed)."""
    await register_requester(client, org)
    fhir = app.state.services.fhir
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for start in range(0, count, 1000):
        chunk = ids[start : start + 1000]
        await fhir.transaction(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"resource": patient(i), "request": {"method": "POST", "url": "Patient"}} for i in chunk
                ],
            }
        )
    return ids


async def run_backend(name: str, url: str, args: argparse.Namespace, cht_url: str, double: ChtDouble) -> None:
    data = Path(tempfile.mkdtemp(prefix="ltfu-bench-"))
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        DATA_DIR=data,
        DATABASE_URL=url,
        INTEROP_CLIENT_PASSWORD=AUTH[1],
        CHT_URL=cht_url,
        CHT_USERNAME="admin",
        CHT_PASSWORD="pass-admin-1",
        DELIVERY_POLL_SECONDS=0.05,
    )
    app = create_app(settings, run_worker=False)
    freeze_startup_heap()  # as `up` and `serve` do
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", auth=AUTH, timeout=600
        ) as client:
            total = 2 * args.singles + args.bundles * 1000 + args.list
            print(f"[{name}] seeding {total} patients …", flush=True)
            patients = iter(await seed(client, app, total, f"org-{name}"))

            async def analyze() -> None:
                """Fresh planner statistics before each timed phase, as autovacuum gives a database
                in steady state (right after a bulk load PostgreSQL plans with stale ones)."""
                async with app.state.services.db.engine.connect() as conn:
                    await conn.execute(text("COMMIT" if name == "postgresql" else "SELECT 1"))
                    await conn.execute(text("ANALYZE"))

            await analyze()
            org = f"org-{name}"

            # single requests: first as direct ASGI calls, then through httpx's ASGI transport
            asgi = AsgiCaller(app, AUTH)
            for how, post in (
                ("direct ASGI calls", asgi.post),
                ("httpx ASGI client", _httpx_post(client)),
            ):
                singles = [next(patients) for _ in range(args.singles)]
                queue: asyncio.Queue[str] = asyncio.Queue()
                for p in singles:
                    queue.put_nowait(p)

                async def client_loop(post: Post = post, queue: asyncio.Queue[str] = queue) -> None:
                    while not queue.empty():
                        p = queue.get_nowait()
                        status, body = await post("/mediator/service-request", service_request(p, org))
                        if status != 201:
                            raise RuntimeError(f"single: {status} {body[:200]!r}")

                t0 = time.perf_counter()
                await asyncio.gather(*(client_loop() for _ in range(args.concurrency)))
                dt = time.perf_counter() - t0
                print(
                    f"[{name}] single requests: {args.singles / dt:,.0f} follow-ups/s "
                    f"({args.singles} in {dt:.2f} s, {args.concurrency} concurrent clients, {how})",
                    flush=True,
                )
                await analyze()

            # 1,000-entry Bundles
            if args.bundles:
                t0 = time.perf_counter()
                for _ in range(args.bundles):
                    entries = [{"resource": service_request(next(patients), org)} for _ in range(1000)]
                    res = await client.post(
                        "/mediator/service-request",
                        json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                    )
                    statuses = {e["response"]["status"] for e in res.json()["entry"]}
                    if res.status_code != 200 or statuses != {"201 Created"}:
                        raise RuntimeError(f"bundle: {res.status_code} {statuses}")
                dt = time.perf_counter() - t0
                print(
                    f"[{name}] 1,000-entry Bundles: {args.bundles * 1000 / dt:,.0f} follow-ups/s "
                    f"({args.bundles} Bundles in {dt:.2f} s)",
                    flush=True,
                )

            # drain what the above queued so the list is measured on its own
            services = app.state.services
            worker = OutboxWorker(services.db, services.handlers, settings)
            await worker.drain()

            # one big list, with the worker running
            await analyze()
            if args.list:
                before = len(double.records)
                stop = asyncio.Event()
                running = asyncio.create_task(worker.run(stop))
                entries = [{"resource": service_request(next(patients), org)} for _ in range(args.list)]
                t0 = time.perf_counter()
                res = await client.post(
                    "/mediator/service-request",
                    json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                )
                accepted = time.perf_counter() - t0
                ok = {"201 Created", "202 Accepted"}
                taken = sum(1 for e in res.json()["entry"] if e["response"]["status"] in ok)
                if taken != args.list:
                    raise RuntimeError(f"list: only {taken} accepted")
                how = "staged, 202" if res.status_code == 202 else "written, 200"
                print(f"[{name}] {args.list:,}-entry list accepted in {accepted:.2f} s ({how})", flush=True)
                if res.status_code == 202:
                    status_url = res.headers["Content-Location"].removeprefix("http://bench")
                    for _poll in range(9000):
                        if (await client.get(status_url)).status_code != 202:
                            break
                        await asyncio.sleep(0.1)
                    written = time.perf_counter() - t0
                    print(
                        f"[{name}] {args.list:,}-entry list: every follow-up written {written:.2f} s after "
                        f"POST ({args.list / (written - accepted):,.0f} follow-ups/s in the background)",
                        flush=True,
                    )
                    t1 = time.perf_counter()
                    final = await client.get(status_url)
                    fetched = time.perf_counter() - t1
                    if final.status_code != 200 or len(final.json()["entry"]) != args.list:
                        raise RuntimeError(f"list status: {final.status_code}")
                    print(
                        f"[{name}] {args.list:,}-entry list: its final status (the whole batch-response, "
                        f"{len(final.content) / 1e6:.1f} MB) read in {fetched:.2f} s",
                        flush=True,
                    )
                while len(double.records) - before < args.list:
                    await asyncio.sleep(0.05)
                    if time.perf_counter() - t0 > 900:
                        raise RuntimeError("CHT submissions did not finish in 15 min")
                done = time.perf_counter() - t0
                stop.set()
                await running
                print(
                    f"[{name}] {args.list:,}-entry list: CHT submissions all done {done:.2f} s after POST "
                    f"({args.list / (done - accepted):,.0f} submissions/s after acceptance)",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", action="store_true", help="also run on PostgreSQL")
    parser.add_argument("--no-sqlite", action="store_true", help="skip SQLite (with --postgres)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--singles", type=int, default=1000)
    parser.add_argument("--bundles", type=int, default=5)
    parser.add_argument("--list", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    double = ChtDouble()
    with serve_in_thread(double.app) as cht_url:
        if not args.no_sqlite:
            path = Path(tempfile.mkdtemp(prefix="ltfu-bench-db-")) / "bench.sqlite3"
            sqlite_url = f"sqlite:///{path}"
            migrate(sqlite_url)
            asyncio.run(run_backend("sqlite", sqlite_url, args, cht_url, double))
        if args.postgres:
            db_name = f"ltfu_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{db_name}"')
            url = args.pg.rsplit("/", 1)[0] + f"/{db_name}"
            try:
                migrate(url)
                asyncio.run(run_backend("postgresql", url, args, cht_url, double))
            finally:
                with psycopg.connect(args.pg, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
