"""The CHT refuses for load (429 with Retry-After, or 503) for a while: every submission slows down,
every record still arrives exactly once, and the pace comes back once the CHT takes them again.
A refused ``_bulk_docs`` request fails all its records; each is retried once the window allows.

The CHT double sits behind a gate that answers the first refused calls itself, keeps each call
open a few milliseconds (a real CHT is not instant) and notes how many calls were open at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from cht_interop.cht.pacing import RECORDS_HELD_PER_SLOT
from cht_interop.delivery.worker import OutboxWorker
from cht_interop.ltfu.writes import CHT_RECORD_JOB
from cht_interop.services import Services
from tests.ltfu.conftest import fhir_all, post_list_of_new_patients
from tests.support.cht_double import ChtDouble
from tests.support.live import serve_in_thread

CAP = 8  # CHT_MAX_CONCURRENT_REQUESTS in these tests
FOLLOW_UPS = 60
REFUSED = 14  # calls the CHT refuses before it takes them again
RETRY_AFTER = 1  # seconds, on the 429s


@dataclass
class Call:
    arrived: float  # time.monotonic() when it reached the CHT
    open_at_arrival: int  # calls open at the CHT, this one included
    refused: bool
    answered: float = 0.0


@dataclass
class RefusingCht:
    """The double behind a gate: the first ``refuse`` calls get ``status`` (with Retry-After on
    429); every call is kept open ``latency`` seconds and noted."""

    status: int
    refuse: int = REFUSED
    latency: float = 0.02
    double: ChtDouble = field(default_factory=ChtDouble)
    calls: list[Call] = field(default_factory=list)
    _open: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> ASGIApp:
        inner = self.double.app

        async def gate(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            with self._lock:
                self._open += 1
                refused = sum(c.refused for c in self.calls) < self.refuse
                call = Call(time.monotonic(), self._open, refused)
                self.calls.append(call)
            try:
                await asyncio.sleep(self.latency)  # the CHT's own time per call
                if refused:
                    headers = {"Retry-After": str(RETRY_AFTER)} if self.status == 429 else {}
                    await PlainTextResponse("busy", status_code=self.status, headers=headers)(
                        scope, receive, send
                    )
                else:
                    await inner(scope, receive, send)
            finally:
                with self._lock:
                    self._open -= 1
                    call.answered = time.monotonic()

        return gate

    def records_per_follow_up(self) -> Counter[str]:
        return Counter(
            str(r["fields"]["service_request_id"]) for r in self.double.records_of_form("INTEROP_FOLLOW_UP")
        )


@pytest.fixture(params=[429, 503])
def refusing_cht(request: pytest.FixtureRequest) -> Iterator[tuple[RefusingCht, str]]:
    cht = RefusingCht(status=request.param)
    with serve_in_thread(cht.app()) as url:
        yield cht, url


@pytest.fixture
def settings_overrides(refusing_cht: tuple[RefusingCht, str]) -> dict[str, Any]:
    _cht, url = refusing_cht
    return {
        "CHT_URL": url,
        "CHT_MAX_CONCURRENT_REQUESTS": CAP,
        "DELIVERY_HORIZON_SECONDS": 120,
        "DELIVERY_MAX_BACKOFF_SECONDS": 0.5,
    }


async def test_a_refusing_cht_slows_every_submission_and_gets_each_record_once(
    client: httpx.AsyncClient, services: Services, refusing_cht: tuple[RefusingCht, str]
) -> None:
    cht, _url = refusing_cht
    await post_list_of_new_patients(client, FOLLOW_UPS)
    # the full window to start: per call of it, as many jobs as fill a batch of records
    full = RECORDS_HELD_PER_SLOT * CAP
    assert services.handlers.in_flight_limit(CHT_RECORD_JOB) == full

    stop = asyncio.Event()
    worker = asyncio.create_task(OutboxWorker(services.db, services.handlers, services.settings).run(stop))
    narrowest = full
    try:
        while len(cht.records_per_follow_up()) < FOLLOW_UPS:
            assert not worker.done(), worker
            narrowest = min(narrowest, services.handlers.in_flight_limit(CHT_RECORD_JOB) or 0)
            await asyncio.sleep(0.01)  # polling the condition above
        accepted = 0
        while accepted < FOLLOW_UPS:  # the Tasks follow their records
            assert not worker.done(), worker
            accepted = sum(t["status"] == "accepted" for t in await fhir_all(client, "Task"))
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await worker

    # exactly once: one record per follow-up, whatever the refusals and retries
    counts = cht.records_per_follow_up()
    assert len(counts) == FOLLOW_UPS and set(counts.values()) == {1}

    refused = [c for c in cht.calls if c.refused]
    taken = [c for c in cht.calls if not c.refused]
    assert len(refused) == REFUSED
    first_wave = refused[:CAP]
    later = [c for c in refused if c not in first_wave]
    # the pace dropped for every submission: after the first refusals the window halved (and then
    # narrowed down to one call); with a Retry-After nothing was sent before it had passed
    assert narrowest <= 2 * RECORDS_HELD_PER_SLOT  # two calls' worth at most
    assert max(c.open_at_arrival for c in later) <= CAP // 2
    if cht.status == 429:
        first_answer = min(c.answered for c in first_wave)
        assert min(c.arrived for c in later) - first_answer >= RETRY_AFTER * 0.95
    # …and came back once the CHT took them: the records went together, several to a
    # ``_bulk_docs`` request (the window widens again per request: a handful of requests after
    # the refusals it is wider than at its narrowest, not yet whole)
    sizes = [len(orjson.loads(r.body)["docs"]) for r in cht.double.requests if r.path == "/medic/_bulk_docs"]
    assert len(sizes) == len(taken) and max(sizes) > 1
