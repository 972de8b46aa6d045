"""A production-shaped stack for the reliability suite: real processes, real peers, loopback only.

- ``cht-interop serve`` and ``cht-interop worker`` as separate processes on one database (SQLite
  file or a PostgreSQL database), killable with SIGKILL and restartable;
- the CHT (``ChtDouble``) behind a switch that makes it answer 503, as a CHT behind its proxy does
  while it restarts;
- a requesting system's callback receiver that can fail every other request, or stop listening
  altogether (its port closed), and counts deliveries per ``X-Notification-Id``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.conftest import CLIENT_AUTH
from tests.ltfu.conftest import endpoint_body, organization_body, service_request_body
from tests.support.cht_double import ChtDouble
from tests.support.live import free_port, serve_in_thread

CHT_ADMIN = ("admin", "pass-admin-1")
FOLLOW_UP_FORM = "INTEROP_FOLLOW_UP"


def eventually(check: Callable[[], Any], what: str, timeout: float = 60, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


# -- the CHT, switchable ----------------------------------------------------------------------


@dataclass
class SwitchableCht:
    """The CHT double, answering 503 ``Service Unavailable`` to everything while ``down``: a
    ``_bulk_docs`` request (many records) is refused whole, as a CHT behind its proxy does."""

    double: ChtDouble = field(default_factory=ChtDouble)
    down: bool = False
    refused: int = 0

    def app(self) -> ASGIApp:
        inner = self.double.app

        async def switch(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and self.down:
                self.refused += 1
                await PlainTextResponse("Service Unavailable", status_code=503)(scope, receive, send)
                return
            await inner(scope, receive, send)

        return switch

    def records_by_service_request(self) -> Counter[str]:
        """How many follow-up records the CHT holds for each ServiceRequest id."""
        return Counter(
            str(doc["fields"].get("service_request_id"))
            for doc in self.double.records_of_form(FOLLOW_UP_FORM)
        )


# -- the callback receiver ----------------------------------------------------------------------


@dataclass
class FlakyReceiver:
    """A requesting system's callback endpoint. ``fail_every_other``: 500 to every second request.
    Records each request's ``X-Notification-Id`` and whether it was answered 2xx."""

    fail_every_other: bool = False
    attempts: Counter[str] = field(default_factory=Counter)
    delivered: Counter[str] = field(default_factory=Counter)  # notification id -> 2xx answers
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: int = 0

    async def handle(self, request: Request) -> Response:
        await request.body()
        notification = request.headers.get("x-notification-id", "")
        with self.lock:
            self.seen += 1
            self.attempts[notification] += 1
            failing = self.fail_every_other and self.seen % 2 == 0
            if not failing:
                self.delivered[notification] += 1
        return Response(status_code=500 if failing else 200)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["PUT", "POST"])])

    @contextmanager
    def listening(self, port: int) -> Iterator[str]:
        with serve_in_thread(self.app(), port=port) as url:
            yield url


# -- the processes ------------------------------------------------------------------------------


@dataclass
class Processes:
    """``serve`` and ``worker`` processes sharing one database and one environment."""

    env: dict[str, str]
    log_dir: Path
    serve_ports: list[int]
    workers: int = 1
    serving: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    working: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: int = 0

    def url(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.serve_ports[index]}"

    def spawn(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        self.starts += 1
        log = open(self.log_dir / f"{name}-{self.starts}.log", "wb")  # noqa: SIM115 (lives with the process)
        return subprocess.Popen(
            [sys.executable, "-m", "cht_interop", *args],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start_serve(self, index: int) -> None:
        port = self.serve_ports[index]
        self.serving[index] = self.spawn(["serve", "--port", str(port)], f"serve{index}")
        eventually(lambda: answers_live(self.url(index)), f"serve {index} to answer", timeout=60, every=0.1)

    def start_worker(self, index: int) -> None:
        self.working[index] = self.spawn(["worker"], f"worker{index}")

    def start(self) -> None:
        for index in range(len(self.serve_ports)):
            self.start_serve(index)
        for index in range(self.workers):
            self.start_worker(index)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)

    def stop(self) -> None:
        for proc in [*self.serving.values(), *self.working.values()]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.serving.values(), *self.working.values()]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self, tail: int | None = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-(tail or 0) :]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )


def answers_live(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stack_env(database_url: str, data_dir: Path, cht_url: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(data_dir),
        "INTEROP_CLIENT_PASSWORD": CLIENT_AUTH[1],
        "CHT_URL": cht_url,
        "CHT_USERNAME": CHT_ADMIN[0],
        "CHT_PASSWORD": CHT_ADMIN[1],
        "ALLOW_PRIVATE_CALLBACKS": "true",
        "DELIVERY_INITIAL_BACKOFF_SECONDS": "0.2",
        "DELIVERY_MAX_BACKOFF_SECONDS": "1",
        "DELIVERY_LEASE_SECONDS": "3",
        "DELIVERY_POLL_SECONDS": "0.2",
        "HTTP_TIMEOUT_SECONDS": "5",
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@contextmanager
def running_stack(
    tmp_path: Path, database_url: str, *, serves: int = 1, workers: int = 1, **extra: str
) -> Iterator[tuple[Processes, SwitchableCht]]:
    cht = SwitchableCht()
    with ExitStack() as stack:
        cht_url = stack.enter_context(serve_in_thread(cht.app()))
        log_dir = tmp_path / "logs"
        log_dir.mkdir()
        env = stack_env(database_url, tmp_path / "data", cht_url, **extra)
        procs = Processes(env, log_dir, [free_port() for _ in range(serves)], workers)
        stack.callback(procs.stop)
        procs.start()
        yield procs, cht


# -- the requesting system's side ----------------------------------------------------------------


async def register(client: httpx.AsyncClient, address: str, org: str = "org-1") -> None:
    ep = await client.post("/mediator/endpoint", json=endpoint_body(f"cb-{org}", address))
    assert ep.status_code in (200, 201), ep.text
    res = await client.post("/mediator/organization", json=organization_body(ep.json()["id"], org))
    assert res.status_code in (200, 201), res.text


async def add_patients(client: httpx.AsyncClient, count: int) -> list[str]:
    """``count`` CHT patients, as the CHT's push would have synced them (one FHIR transaction per 500)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for start in range(0, count, 500):
        entries = [
            {
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "cht", "value": cht_id}],
                    "name": [{"family": "Doe", "given": ["Jo"]}],
                    "gender": "female",
                    "birthDate": "1990-01-01",
                },
                "request": {"method": "POST", "url": "Patient"},
            }
            for cht_id in ids[start : start + 500]
        ]
        res = await client.post(
            "/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
        )
        assert res.status_code == 200, res.text
    return ids


@dataclass
class Acknowledged:
    """What the server acknowledged: ServiceRequest id per patient (201/200 answers only)."""

    by_patient: dict[str, str] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)


async def submit_all(
    urls: list[str], patients: list[str], *, concurrency: int = 16, ack: Acknowledged | None = None
) -> Acknowledged:
    """POST one follow-up per patient, ``concurrency`` at a time, spread over ``urls``; a request
    whose connection failed (a killed server) is retried until acknowledged, as an EMR would."""
    ack = ack or Acknowledged()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in patients:
        queue.put_nowait(p)

    async def lane(n: int) -> None:
        async with httpx.AsyncClient(auth=CLIENT_AUTH, timeout=30) as client:
            while not queue.empty():
                patient = queue.get_nowait()
                while True:
                    url = urls[(n + ack.errors.total()) % len(urls)]
                    try:
                        res = await client.post(
                            f"{url}/mediator/service-request", json=service_request_body(patient)
                        )
                    except httpx.HTTPError as exc:
                        ack.errors[type(exc).__name__] += 1
                        await asyncio.sleep(0.2)
                        continue
                    if res.status_code >= 500:
                        ack.errors[str(res.status_code)] += 1
                        await asyncio.sleep(0.2)
                        continue
                    assert res.status_code in (200, 201), res.text
                    ack.by_patient[patient] = res.headers["location"].rsplit("/", 1)[1]
                    break

    await asyncio.gather(*(lane(n) for n in range(concurrency)))
    return ack
