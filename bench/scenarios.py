"""The scenarios of ``bench/suite.py``: each starts its own processes and returns rows of figures."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import orjson
import psycopg
from starlette.requests import Request
from starlette.responses import Response
from tests.conftest import CLIENT_AUTH
from tests.ltfu.conftest import encounter_body, service_request_body
from tests.reliability.stack import (
    FlakyReceiver,
    Processes,
    SwitchableCht,
    add_patients,
    answers_live,
    eventually,
    register,
    stack_env,
)
from tests.support.live import free_port, serve_in_thread

if TYPE_CHECKING:
    from bench.suite import Sizes

Row = dict[str, Any]
TIMEOUT = httpx.Timeout(120)
JSON = {"content-type": "application/json"}


def basic(user: str, password: str) -> str:
    """An ``Authorization: Basic`` value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    if not samples:
        return {"p50 ms": float("nan"), "p99 ms": float("nan")}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50 ms": statistics.median(ordered) * 1000, "p99 ms": p99 * 1000}


# -- setting up ------------------------------------------------------------------------------------


@contextmanager
def database(kind: str, pg_admin: str) -> Iterator[str]:
    """A fresh database: a SQLite file, or a PostgreSQL database created and dropped here."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-db-") as tmp:
            yield f"sqlite:///{tmp}/bench.sqlite3"
        return
    name = f"cht_interop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def stack(
    database_url: str, *, serves: int = 1, workers: int = 0, **extra: str
) -> Iterator[tuple[Processes, SwitchableCht]]:
    """``serve`` (and ``worker``) processes on ``database_url`` with the CHT double on loopback."""
    cht = SwitchableCht()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        cht_url = stack.enter_context(serve_in_thread(cht.app()))
        logs = Path(tmp) / "logs"
        logs.mkdir()
        env = stack_env(database_url, Path(tmp) / "data", cht_url, DELIVERY_LEASE_SECONDS="60", **extra)
        procs = Processes(env, logs, [free_port() for _ in range(serves)], workers)
        stack.callback(procs.stop)
        procs.start()
        yield procs, cht


def list_bundle(patients: list[str]) -> dict[str, Any]:
    """An LTFU list: one ServiceRequest entry per patient."""
    entry = [
        {"resource": service_request_body(p), "request": {"method": "POST", "url": "ServiceRequest"}}
        for p in patients
    ]
    return {"resourceType": "Bundle", "type": "batch", "entry": entry}


def rest_hook(criteria: str, reason: str) -> dict[str, Any]:
    channel = {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/cb", "payload": "application/fhir+json"}
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": reason,
        "criteria": criteria,
        "channel": channel,
    }


async def poll(check: Callable[[], Awaitable[bool]], every: float, within: float = 1800) -> None:
    """Return once ``check`` is true (polled every ``every`` s)."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await asyncio.sleep(every)


async def list_done(c: httpx.AsyncClient, status_url: str) -> bool:
    return (await c.get(status_url)).status_code != 202


def client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    return httpx.AsyncClient(base_url=url, auth=CLIENT_AUTH, timeout=TIMEOUT, limits=limits)


async def seed(url: str, count: int, receiver: str = "http://127.0.0.1:9/unused") -> list[str]:
    async with client(url) as c:
        await register(c, receiver)
        return await add_patients(c, count)


async def load(
    urls: list[str], patients: list[str], concurrency: int, pids: tuple[int, ...] = ()
) -> dict[str, float]:
    """One follow-up per patient, ``concurrency`` clients spread over ``urls``.

    The load is sent with aiohttp, not httpx: at 32 clients httpx's pool took 92% of a core for
    200 requests/s and was the bottleneck being measured (aiohttp: ~15% of a core at 600/s). The
    generator's own CPU share is reported so that a saturated client shows in the figures.
    """
    queue = list(reversed(patients))
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {**JSON, "Authorization": basic(*CLIENT_AUTH)}
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(120)) as session:

        async def lane(n: int) -> None:
            url = urls[n % len(urls)] + "/mediator/service-request"
            while queue:
                body = orjson.dumps(service_request_body(queue.pop()))
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as res:
                    text = await res.text()
                latencies.append(time.perf_counter() - started)
                if res.status not in (200, 201):
                    raise RuntimeError(f"{res.status}: {text[:300]}")

        served = sum(cpu_seconds(pid) for pid in pids)
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(lane(n) for n in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        served = sum(cpu_seconds(pid) for pid in pids) - served
    # serve's CPU per follow-up (all ``serve`` processes): robust to a shared box's noise
    per_follow_up = {"serve CPU ms/follow-up": 1000 * served / len(patients)} if pids else {}
    return {
        "follow-ups/s": len(patients) / elapsed,
        **percentiles(latencies),
        **per_follow_up,
        "load generator CPU %": 100 * cpu / elapsed,
    }


# -- the scenarios ---------------------------------------------------------------------------------


SINGLES_CASES = (
    "sqlite:1:8",
    "sqlite:1:32",
    "postgresql:1:8",
    "postgresql:1:32",
    "postgresql:2:8",
    "postgresql:2:32",
)


def singles(sizes: Sizes) -> list[Row]:
    """Each ``kind:serves:clients`` case of ``sizes.singles_cases``, one stack per kind and serves."""
    rows: list[Row] = []
    cases = [tuple(case.split(":")) for case in sizes.singles_cases]
    # SQLite takes one serving process (``db/serving.py``): replicas are PostgreSQL's
    for kind, serves in dict.fromkeys((kind, int(serves)) for kind, serves, _ in cases):
        clients = [int(c) for k, s, c in cases if (k, int(s)) == (kind, serves)]
        with database(kind, sizes.pg) as url, stack(url, serves=serves) as (procs, _):
            urls = [procs.url(i) for i in range(serves)]
            pids = tuple(procs.serving[i].pid for i in range(serves))
            patients = asyncio.run(seed(urls[0], sizes.singles * len(clients)))
            for n, concurrency in enumerate(clients):
                batch = patients[n * sizes.singles : (n + 1) * sizes.singles]
                figures = asyncio.run(load(urls, batch, concurrency, pids))
                case = f"{kind}, {serves} serve, {concurrency} clients"
                rows.append({"case": case, "figures": figures})
    return rows


async def post_lists(url: str, patients: list[str], count: int) -> dict[str, float]:
    """``count`` 1,000-entry lists, one after another."""
    latencies: list[float] = []
    async with client(url) as c:
        started = time.perf_counter()
        for n in range(count):
            t0 = time.perf_counter()
            res = await c.post(
                "/mediator/service-request", json=list_bundle(patients[n * 1000 : (n + 1) * 1000])
            )
            latencies.append(time.perf_counter() - t0)
            if res.status_code != 200:
                raise RuntimeError(f"{res.status_code}: {res.text[:300]}")
        elapsed = time.perf_counter() - started
    return {"follow-ups/s": count * 1000 / elapsed, "per Bundle ms": sum(latencies) / len(latencies) * 1000}


def bundles(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    for kind in ("sqlite", "postgresql"):
        with database(kind, sizes.pg) as url, stack(url) as (procs, _):
            patients = asyncio.run(seed(procs.url(), sizes.bundles * 1000))
            figures = asyncio.run(post_lists(procs.url(), patients, sizes.bundles))
            rows.append({"case": f"{kind}, 1 serve, 1,000-entry Bundles", "figures": figures})
    return rows


async def submit_list(url: str, patients: list[str], cht: SwitchableCht) -> dict[str, float]:
    """One list, asynchronously: accepted, every follow-up written, every CHT record made."""
    async with client(url) as c:
        started = time.perf_counter()
        res = await c.post(
            "/mediator/service-request", json=list_bundle(patients), headers={"Prefer": "respond-async"}
        )
        accepted = time.perf_counter() - started
        if res.status_code != 202:
            raise RuntimeError(f"{res.status_code}: {res.text[:300]}")
        status_url = res.headers["content-location"]
        await poll(lambda: list_done(c, status_url), 0.2)
        written = time.perf_counter() - started

        async def recorded_all() -> bool:
            return len(cht.records_by_service_request()) >= len(patients)

        await poll(recorded_all, 0.2)
        recorded = time.perf_counter() - started
    return {
        "accepted s": accepted,
        "written s": written,
        "last CHT record s": recorded,
        "CHT records/s": len(patients) / max(recorded - written, 1e-9),
    }


def big_list(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    for kind, workers in ((k, int(w)) for k, w in (c.split(":") for c in sizes.list_cases)):
        with database(kind, sizes.pg) as url, stack(url, workers=workers) as (procs, cht):
            patients = asyncio.run(seed(procs.url(), sizes.list_entries))
            pids = {"serve": procs.serving[0].pid}
            pids.update({f"worker{n}": proc.pid for n, proc in procs.working.items()})
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            figures = asyncio.run(submit_list(procs.url(), patients, cht))
            # CPU per entry (list write + CHT record + acceptance): robust to a shared box's noise
            for name, pid in pids.items():
                figures[f"{name} CPU ms per entry"] = 1000 * (cpu_seconds(pid) - before[name]) / len(patients)
            case = f"{kind}, {workers} worker{'s' if workers > 1 else ''}, {sizes.list_entries:,} entries"
            rows.append({"case": case, "figures": figures})
    return rows


async def paced_encounters(
    url: str, patients: list[str], rate: float, receiver: TimedReceiver
) -> dict[str, float]:
    """One Encounter per patient, offered at ``rate`` per second whatever the answers' pace.

    Sent with aiohttp (as ``load``), over at most 64 connections: with httpx, once the server fell
    behind, its pool's CPU grew with the requests queued for a connection, the generator sent
    ever slower, the server saw fewer reports at once (smaller batches, more CPU each) and the
    rate sustained collapsed to a fraction of the server's (PostgreSQL, 100/s offered: ~20/s
    sustained, while 40/s offered were all sustained). The generator's CPU share is reported.
    """
    posted: dict[str, float] = {}
    latencies: list[float] = []
    headers = {**JSON, "Authorization": basic(*CLIENT_AUTH)}
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(120)) as session:

        async def one(patient: str, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            body = orjson.dumps(encounter_body(patient))
            t0 = time.perf_counter()
            async with session.post(url + "/mediator/encounter", data=body, headers=headers) as res:
                text = await res.text()
            posted[patient] = time.perf_counter()
            latencies.append(posted[patient] - t0)
            if res.status not in (200, 201):
                raise RuntimeError(f"{res.status}: {text[:300]}")

        start = time.perf_counter() + 0.5
        cpu = time.process_time()
        await asyncio.gather(*(one(p, start + i / rate) for i, p in enumerate(patients)))
        elapsed = max(posted.values()) - start
        sustained = len(patients) / elapsed
        generator_cpu = 100 * (time.process_time() - cpu) / elapsed

    async def all_arrived() -> bool:
        return len(receiver.arrived) >= len(patients)

    with contextlib.suppress(RuntimeError):
        await poll(all_arrived, 0.1, within=300)
    delays = [receiver.arrived[p] - posted[p] for p in patients if p in receiver.arrived]
    post = {f"POST {k}": v for k, v in percentiles(latencies).items()}
    callback = {f"callback {k}": v for k, v in percentiles(delays).items()}
    return {
        "Encounters/s sustained": sustained,
        **post,
        **callback,
        "callbacks": float(len(delays)),
        "load generator CPU %": generator_cpu,
    }


@contextmanager
def up_stack(database_url: str, *, cht_sandbox: bool = False) -> Iterator[tuple[Processes, SwitchableCht]]:
    """``cht-interop up`` (the API and the worker in one process: SQLite's deployment) with the
    CHT double on loopback, or with ``cht_sandbox`` the sandbox inside the process instead (its
    URL is ``sandbox_url(procs)``); its process is ``procs.serving[0]``."""
    cht = SwitchableCht()
    port = free_port()
    with serve_in_thread(cht.app()) as cht_url, tempfile.TemporaryDirectory(prefix="bench-up-") as tmp:
        env = stack_env(database_url, Path(tmp) / "data", cht_url, DELIVERY_LEASE_SECONDS="60")
        procs = Processes(env, Path(tmp), [port])
        args = ["up", "--port", str(port)]
        if cht_sandbox:
            procs.env["BENCH_SANDBOX_PORT"] = str(free_port())
            args += ["--cht-sandbox", "--cht-sandbox-port", procs.env["BENCH_SANDBOX_PORT"]]
        procs.serving[0] = procs.spawn(args, "up")
        try:
            eventually(lambda: answers_live(procs.url()), "up to answer", 60)
            yield procs, cht
        finally:
            procs.stop()


def sandbox_url(procs: Processes) -> str:
    return f"http://127.0.0.1:{procs.env['BENCH_SANDBOX_PORT']}"


def callbacks(sizes: Sizes) -> list[Row]:
    """SQLite as it is deployed (``up``: one process), PostgreSQL as it is (``serve`` + ``worker``)."""
    return [callbacks_on(kind, sizes) for kind in sizes.callback_kinds]


def callbacks_on(kind: str, sizes: Sizes) -> Row:
    receiver = TimedReceiver()
    port = free_port()
    with (
        database(kind, sizes.pg) as url,
        serve_in_thread(receiver.app(), port=port),
        up_stack(url) if kind == "sqlite" else stack(url, workers=1) as (procs, cht),
    ):
        patients = asyncio.run(seed(procs.url(), sizes.callbacks, f"http://127.0.0.1:{port}/fhir"))
        asyncio.run(load([procs.url()], patients, 16))
        eventually(lambda: len(cht.records_by_service_request()) >= len(patients), "the CHT records", 300)
        pids = {"up" if kind == "sqlite" else "serve": procs.serving[0].pid}
        pids.update({f"worker{n}": proc.pid for n, proc in procs.working.items()})
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        figures = asyncio.run(paced_encounters(procs.url(), patients, sizes.callback_rate, receiver))
        # CPU per Encounter (POST through its callback's delivery): robust to a shared box's noise
        for name, pid in pids.items():
            spent = cpu_seconds(pid) - before[name]
            figures[f"{name} CPU ms per Encounter"] = 1000 * spent / len(patients)
    shape = "up" if kind == "sqlite" else "serve + worker"
    return {"case": f"{kind}, {shape}, {sizes.callback_rate:.0f}/s offered", "figures": figures}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TimedReceiver(FlakyReceiver):
    """The callback receiver, noting when each patient's Encounter first arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, float] = {}

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        now = time.perf_counter()
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            self.arrived.setdefault(orjson.loads(body)["identifier"][0]["value"], now)
        return Response(status_code=200)


async def add_subscriptions(url: str, count: int) -> None:
    """``count`` rest-hook Subscriptions matching nothing the benchmark writes."""
    async with client(url) as c:
        for start in range(0, count, 1000):
            entries = [
                {
                    "resource": rest_hook(f"Encounter?identifier={uuid.uuid4()}", "bench"),
                    "request": {"method": "POST", "url": "Subscription"},
                }
                for _ in range(min(1000, count - start))
            ]
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
            res = await c.post("/fhir", json=bundle)
            if res.status_code != 200:
                raise RuntimeError(f"{res.status_code}: {res.text[:300]}")


async def encounter_writes(url: str, count: int) -> dict[str, float]:
    latencies: list[float] = []
    async with client(url) as c:
        for _ in range(count):
            body = {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"code": "AMB"},
                "identifier": [{"value": str(uuid.uuid4())}],
            }
            t0 = time.perf_counter()
            res = await c.post("/fhir/Encounter", json=body)
            latencies.append(time.perf_counter() - t0)
            if res.status_code != 201:
                raise RuntimeError(f"{res.status_code}: {res.text[:300]}")
    return percentiles(latencies)


def subscriptions(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    with database("sqlite", sizes.pg) as url, stack(url) as (procs, _):
        asyncio.run(add_subscriptions(procs.url(), 10))
        rows.append(
            {"case": "10 active Subscriptions", "figures": asyncio.run(encounter_writes(procs.url(), 300))}
        )
        asyncio.run(add_subscriptions(procs.url(), sizes.subscriptions - 10))
        figures = asyncio.run(encounter_writes(procs.url(), 300))
        rows.append({"case": f"{sizes.subscriptions:,} active Subscriptions", "figures": figures})
    return rows


async def reference_follow_ups(url: str, cht_url: str, patients: list[str]) -> dict[str, float]:
    """The reference mediator's calls for each follow-up, one after another, 8 at a time (with the
    same HTTP client as ``load``, so the ratio compares the servers' work, not two clients)."""
    queue = list(reversed(patients))
    latencies: list[float] = []
    ours = {"Authorization": basic(*CLIENT_AUTH)}
    cht = {"Authorization": basic("admin", "pass-admin-1"), "Accept": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(120)) as session:

        async def call(method: str, target: str, headers: dict[str, str], **kw: Any) -> None:
            async with session.request(method, target, headers=headers, **kw) as res:
                text = await res.text()
            if res.status >= 300:
                raise RuntimeError(f"{method} {target}: {res.status} {text[:200]}")

        async def lane() -> None:
            while queue:
                patient = queue.pop()
                t0 = time.perf_counter()
                await call("GET", f"{url}/fhir/Patient", ours, params={"identifier": patient})
                await call("GET", f"{url}/fhir/Organization", ours, params={"identifier": "org-1"})
                subscription = rest_hook(f"Encounter?identifier={patient}", "reference")
                await call("POST", f"{url}/fhir/Subscription", ours, json=subscription)
                record = {"_meta": {"form": "interop_follow_up"}, "patient_uuid": patient}
                await call("POST", f"{cht_url}/api/v2/records", cht, json=record)
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(8)))
        elapsed = time.perf_counter() - started
    return {"follow-ups/s": len(patients) / elapsed, **percentiles(latencies)}


def reference_shape(sizes: Sizes) -> list[Row]:
    """Ours (one call per follow-up) against the reference's four calls, same servers, same run."""
    with database("sqlite", sizes.pg) as url, stack(url) as (procs, _):
        patients = asyncio.run(seed(procs.url(), sizes.reference * 2))
        ours = asyncio.run(load([procs.url()], patients[: sizes.reference], 8))
        theirs = asyncio.run(
            reference_follow_ups(procs.url(), procs.env["CHT_URL"], patients[sizes.reference :])
        )
    return [
        {"case": "ours: one call, 8 clients", "figures": ours},
        {"case": "reference shape: 4 calls, 8 clients", "figures": theirs},
        {"case": "ratio", "figures": {"ours / reference": ours["follow-ups/s"] / theirs["follow-ups/s"]}},
    ]
