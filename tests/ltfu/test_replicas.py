"""Two API replicas on one PostgreSQL database start one follow-up for one patient, not two.

The embedded SQLite database has one serving process by design, so this is PostgreSQL's case only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cht_interop.app import create_app
from cht_interop.ltfu import lists as L
from cht_interop.ltfu import staged_lists
from tests.conftest import CLIENT_AUTH, make_settings, truncate_pg
from tests.ltfu.conftest import fhir_all, push_patient, register_requester, service_request_body

pytestmark = pytest.mark.postgres

# Generous bound on a request that must not wait for the other replica's list: it only turns a
# hang into a failure, it measures nothing.
HANG = 30


@pytest.fixture
async def replica_apps(tmp_path: Path, pg_url: str) -> AsyncIterator[list[Any]]:
    """Two API replicas' apps on one PostgreSQL database, started."""
    truncate_pg(pg_url)
    apps: list[Any] = []
    for n in range(2):
        settings = make_settings(tmp_path / f"replica-{n}", pg_url)
        apps.append(create_app(settings, run_worker=False))
    async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
        yield apps


@pytest.fixture
async def replicas(replica_apps: list[Any]) -> AsyncIterator[list[httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []
    for application in replica_apps:
        transport = httpx.ASGITransport(app=application)
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://test", auth=CLIENT_AUTH))
    try:
        yield clients
    finally:
        for c in clients:
            await c.aclose()


async def ask(client: httpx.AsyncClient, patient: str, **extra: Any) -> int:
    """One follow-up request; its status (201 new, 200 found)."""
    res = await client.post("/mediator/service-request", json=service_request_body(patient, **extra))
    assert res.status_code in (200, 201), res.text
    return res.status_code


async def test_concurrent_requests_on_two_replicas_make_one_follow_up(
    replicas: list[httpx.AsyncClient],
) -> None:
    first, second = replicas
    await register_requester(first)
    patients = [await push_patient(first) for _ in range(6)]

    statuses = await asyncio.gather(
        *(ask(replicas[n % 2], p) for p in patients for n in range(4)),
    )
    assert statuses.count(201) == len(patients)  # one new follow-up per patient, the rest found it
    tasks = await fhir_all(second, "Task")
    assert sorted(t["for"]["reference"] for t in tasks) == sorted({t["for"]["reference"] for t in tasks})
    assert len(tasks) == len(patients)
    assert len(await fhir_all(second, "Subscription")) == len(patients)


async def test_a_patient_named_two_ways_on_two_replicas_gets_one_follow_up(
    replicas: list[httpx.AsyncClient],
) -> None:
    """Small batches lock the keys of the patient they resolved, not the reference as written:
    ``Patient/<CHT id>`` on one replica and ``Patient/<FHIR id>`` on the other are one patient."""
    first, second = replicas
    await register_requester(first)
    cht_id = await push_patient(first)
    (patient,) = await fhir_all(first, "Patient", identifier=cht_id)

    statuses = await asyncio.gather(
        *(ask(first, cht_id) for _ in range(4)), *(ask(second, patient["id"]) for _ in range(4))
    )
    assert statuses.count(201) == 1
    assert len(await fhir_all(second, "Task")) == 1


async def test_one_identifier_on_two_replicas_makes_one_service_request(
    replicas: list[httpx.AsyncClient],
) -> None:
    """The request's identifier is a key of its own: two patients, one identifier, one follow-up."""
    first, second = replicas
    await register_requester(first)
    patients = [await push_patient(first) for _ in range(4)]
    identifier = [{"system": "https://emr.example.org/referrals", "value": "ref-42"}]

    statuses = await asyncio.gather(
        *(ask(replicas[n % 2], p, identifier=identifier) for n, p in enumerate(patients))
    )
    assert statuses.count(201) == 1
    assert len(await fhir_all(second, "ServiceRequest", identifier="ref-42")) == 1


async def test_a_list_on_one_replica_and_singles_on_the_other_make_one_follow_up_each(
    replicas: list[httpx.AsyncClient],
) -> None:
    """A list longer than a keyed batch takes the start lock whole; the other replica's single
    requests for the same patients (which share it) wait for it, or it for them: one each."""
    first, second = replicas
    await register_requester(first)
    patients = [await push_patient(first) for _ in range(80)]
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": service_request_body(p), "request": {"method": "POST", "url": "ServiceRequest"}}
            for p in patients
        ],
    }

    async def send_list() -> list[str]:
        res = await first.post("/mediator/service-request", json=bundle)
        assert res.status_code == 200, res.text
        return [e["response"]["status"] for e in res.json()["entry"]]

    listed, *singles = await asyncio.gather(send_list(), *(ask(second, p) for p in patients[::4]))
    created = [s for s in listed if s.startswith("201")] + [s for s in singles if s == 201]
    assert len(created) == len(patients)
    tasks = await fhir_all(second, "Task")
    assert len(tasks) == len(patients)
    assert len({t["for"]["reference"] for t in tasks}) == len(patients)


async def test_a_replica_staging_a_list_leaves_the_other_replicas_list_open_between_its_turns(
    replicas: list[httpx.AsyncClient], replica_apps: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long list takes the start lock a turn at a time. Between two of the first replica's
    turns, the second replica stages a list of its own (one patient of it in the first's first
    turn): it is answered then, with that patient's follow-up from the first's list, and leaves
    the first's list open (its stager is alive: a list it closed would be marked done once the
    turns so far were written). The first list then goes on, and every patient gets one follow-up."""
    monkeypatch.setattr(staged_lists, "LIST_TURN_ENTRIES", 2)
    first, second = replicas
    await register_requester(first)
    patients = [await push_patient(first) for _ in range(6)]
    staging_first: list[str] = []
    between = asyncio.Event()
    go_on = asyncio.Event()
    duplicates = replica_apps[0].state.services.ltfu.duplicates
    turn = duplicates.turn
    turns: list[int] = []

    @contextlib.asynccontextmanager
    async def paused_before_the_second() -> AsyncIterator[Any]:
        turns.append(1)
        if len(turns) == 2:
            between.set()
            await go_on.wait()
        async with turn() as held:
            yield held

    monkeypatch.setattr(duplicates, "turn", paused_before_the_second)
    sent = asyncio.create_task(send_list(first, patients[:4]))
    await asyncio.wait_for(between.wait(), HANG)
    async with replica_apps[1].state.services.db.connect() as conn:
        staging_first += await L.still_staging(conn)
    assert len(staging_first) == 1

    others = await asyncio.wait_for(send_list(second, [patients[0], *patients[4:]]), HANG)

    assert [e["response"]["status"] for e in others.json()["entry"]] == ["202 Accepted"] * 3
    async with replica_apps[1].state.services.db.connect() as conn:
        assert await L.still_staging(conn) == staging_first  # left open
    go_on.set()
    listed = await sent
    entries = listed.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["202 Accepted"] * 4
    assert others.json()["entry"][0]["link"] == entries[0]["link"]  # the first list's follow-up
    status = await second.get(listed.headers["Content-Location"].removeprefix("http://test"))
    assert status.status_code == 202, status.text  # closed by its own replica, being written
    async with replica_apps[1].state.services.db.connect() as conn:
        assert await L.still_staging(conn) == []


async def send_list(client: httpx.AsyncClient, patients: list[str]) -> httpx.Response:
    """A list of follow-ups for ``patients``, staged (answered 202 once checked and staged)."""
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": service_request_body(p)} for p in patients],
    }
    res = await client.post("/mediator/service-request", json=bundle, headers={"Prefer": "respond-async"})
    assert res.status_code == 202, res.text
    return res
