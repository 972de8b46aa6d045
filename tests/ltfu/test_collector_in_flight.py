"""Single follow-ups under concurrent load, with the collector set as ``serve`` and ``up`` set it
(``runner.freeze_startup_heap``): the objects of the requests in flight are freed by reference
counting before a young collection sees them, so the middle generation is never collected, nothing
is promoted into the old one, and no full collection comes (in ``serve`` one came every ~450
requests, and each stretched a whole group-committed batch of 32: the p99). With CPython's
default threshold the same 400 follow-ups ran ~74 young and ~6 middle collections."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cht_interop import runner
from tests.ltfu.conftest import push_patient, register_requester, service_request_body

FOLLOW_UPS = 400
CLIENTS = 32


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """SQLite only: the subject is the server process's collector, not the database."""
    return sqlite_url


@pytest.fixture
def collector_restored() -> Iterator[None]:
    """The test process's collector as it was (thresholds, nothing frozen)."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


async def test_follow_ups_in_flight_bring_no_full_collection(
    client: httpx.AsyncClient, collector_restored: None
) -> None:
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(FOLLOW_UPS)]
    runner.freeze_startup_heap()  # what serve and up do once the app is built
    collections: list[int] = []  # the generation of each collection

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            collections.append(info["generation"])

    async def one_client() -> None:
        while patients:
            res = await client.post("/mediator/service-request", json=service_request_body(patients.pop()))
            assert res.status_code == 201, res.text

    gc.callbacks.append(seen)
    try:
        await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    finally:
        gc.callbacks.remove(seen)
    young, middle, full = (collections.count(g) for g in (0, 1, 2))
    assert (middle, full) == (0, 0), f"{young} young collections promoted requests in flight"
