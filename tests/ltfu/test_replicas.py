"""Two API replicas on one PostgreSQL database start one follow-up for one patient, not two.

The embedded SQLite database has one serving process by design, so this is PostgreSQL's case only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cht_interop.app import create_app
from tests.conftest import CLIENT_AUTH, make_settings, truncate_pg
from tests.ltfu.conftest import fhir_all, push_patient, register_requester, service_request_body

pytestmark = pytest.mark.postgres


@pytest.fixture
async def replicas(tmp_path: Path, pg_url: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    truncate_pg(pg_url)
    clients: list[httpx.AsyncClient] = []
    apps: list[Any] = []
    for n in range(2):
        settings = make_settings(tmp_path / f"replica-{n}", pg_url)
        apps.append(create_app(settings, run_worker=False))
    async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
        for application in apps:
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
