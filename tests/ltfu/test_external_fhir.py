"""The mediator against an external FHIR server (FHIR_URL): only FhirClient over real loopback HTTP.

The external server here is our own interop API in another app instance (standing in for HAPI);
the mediator's app has its own database for the outbox only.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from cht_interop.app import create_app
from cht_interop.delivery.tables import outbox_jobs
from cht_interop.delivery.worker import OutboxWorker
from cht_interop.services import Services
from tests.conftest import CLIENT_AUTH, make_settings
from tests.ltfu.conftest import encounter_body, push_patient, register_requester, service_request_body
from tests.support.cht_double import ChtDouble
from tests.support.live import serve_in_thread


@pytest.fixture
def fhir_server(tmp_path: Path, sqlite_url: str) -> Iterator[str]:
    settings = make_settings(tmp_path / "fhir-server", sqlite_url)
    with serve_in_thread(create_app(settings, run_worker=False)) as url:
        yield f"{url}/fhir"


@pytest.fixture
async def mediator(
    tmp_path: Path, sqlite_template: Path, fhir_server: str, cht_server: tuple[ChtDouble, str]
) -> AsyncIterator[Any]:
    own_db = tmp_path / "mediator.sqlite3"
    shutil.copy(sqlite_template, own_db)
    settings = make_settings(
        tmp_path / "mediator",
        f"sqlite:///{own_db}",
        FHIR_URL=fhir_server,
        FHIR_USERNAME=CLIENT_AUTH[0],
        FHIR_PASSWORD=CLIENT_AUTH[1],
        CHT_URL=cht_server[1],
        CHT_USERNAME="admin",
        CHT_PASSWORD="pass-admin-1",
        EXTERNAL_SUBSCRIPTION_OFF_DELAY_SECONDS=1,
    )
    application = create_app(settings, run_worker=False)
    async with application.router.lifespan_context(application):
        yield application


async def test_follow_up_flow_through_an_external_fhir_server(
    mediator: Any, fhir_server: str, cht: ChtDouble
) -> None:
    services = mediator.state.services
    transport = httpx.ASGITransport(app=mediator)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://mediator", auth=CLIENT_AUTH) as client,
        httpx.AsyncClient(base_url=fhir_server, auth=CLIENT_AUTH) as fhir,
    ):
        await register_requester(client)
        patient = await push_patient(client)
        res = await client.post("/mediator/service-request", json=service_request_body(patient))
        assert res.status_code == 201, res.text
        assert res.json()["criteria"] == f"Encounter?identifier={patient}"
        sr_id = res.headers["Location"].rsplit("/", 1)[1]

        await OutboxWorker(services.db, services.handlers, services.settings).drain()
        (record,) = cht.records_of_form("INTEROP_FOLLOW_UP")
        assert record["fields"]["service_request_id"] == sr_id
        task = (await fhir.get("/Task", params={"based-on": f"ServiceRequest/{sr_id}"})).json()["entry"][0][
            "resource"
        ]
        assert task["status"] == "accepted"

        enc = await client.post("/mediator/encounter", json=encounter_body(patient, "rep-1"))
        assert enc.status_code == 201
        task = (await fhir.get(f"/Task/{task['id']}")).json()
        assert task["status"] == "completed"
        assert task["output"][0]["valueReference"] == {"reference": f"Encounter/{enc.json()['id']}"}

        again = await client.post("/mediator/service-request", json=service_request_body(patient))
        assert again.status_code == 201  # the first follow-up is over: a new one starts

        # its Subscription stays active until the external server has had time to notify
        sub_id = res.json()["id"]
        worker = OutboxWorker(services.db, services.handlers, services.settings)
        await worker.drain()
        assert (await fhir.get(f"/Subscription/{sub_id}")).json()["status"] == "active"
        for _ in range(100):
            await asyncio.sleep(0.1)
            async with services.db.transaction() as conn:  # do not wait for the backoff
                await conn.execute(update(outbox_jobs).values(next_attempt_at=datetime.now(UTC)))
            await worker.drain()
            if (await fhir.get(f"/Subscription/{sub_id}")).json()["status"] == "off":
                break
        assert (await fhir.get(f"/Subscription/{sub_id}")).json()["status"] == "off"


async def test_the_mediator_plans_by_declared_capabilities_not_by_client_type(
    mediator: Any, services: Services
) -> None:
    """Embedded: the store is in Services and takes trusted writes; external: no store, the server
    validates and notifies itself, and searches carry fewer ids (they go in the URL)."""
    from cht_interop.fhir.store import FhirStore

    external: Services = mediator.state.services
    assert external.fhir_store is None
    assert not external.fhir.capabilities.trusted_writes
    assert not external.fhir.capabilities.notifies_in_write
    assert isinstance(services.fhir_store, FhirStore)
    assert services.fhir.capabilities.trusted_writes and services.fhir.capabilities.notifies_in_write
    assert external.fhir.capabilities.search_batch < services.fhir.capabilities.search_batch
