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


async def test_concurrent_requests_on_two_replicas_make_one_follow_up(
    replicas: list[httpx.AsyncClient],
) -> None:
    first, second = replicas
    await register_requester(first)
    patients = [await push_patient(first) for _ in range(6)]

    async def ask(client: httpx.AsyncClient, patient: str) -> int:
        res = await client.post("/mediator/service-request", json=service_request_body(patient))
        assert res.status_code in (200, 201), res.text
        return res.status_code

    statuses = await asyncio.gather(
        *(ask(replicas[n % 2], p) for p in patients for n in range(4)),
    )
    assert statuses.count(201) == len(patients)  # one new follow-up per patient, the rest found it
    tasks = await fhir_all(second, "Task")
    assert sorted(t["for"]["reference"] for t in tasks) == sorted({t["for"]["reference"] for t in tasks})
    assert len(tasks) == len(patients)
    assert len(await fhir_all(second, "Subscription")) == len(patients)
