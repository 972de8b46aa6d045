"""One recording, two readers: the OpenHIM transaction and the journal row agree."""

from __future__ import annotations

from typing import Any

import httpx

from cht_interop.journal import store
from cht_interop.services import Services
from tests.conftest import CLIENT_AUTH
from tests.journal.conftest import full, journal_rows
from tests.journal.test_requests import OPENHIM, TX_ID
from tests.ltfu.conftest import push_patient, register_requester, service_request_body

# the app against an external FHIR server over loopback (its calls are orchestrations)
from tests.ltfu.test_external_fhir import fhir_server  # noqa: F401
from tests.ltfu.test_external_fhir import mediator as external_mediator  # noqa: F401
from tests.support.cht_double import ChtDouble
from tests.support.openhim_double import OpenHimRouter


async def test_routed_through_core_the_ids_agree(app: Any, services: Services, cht: ChtDouble) -> None:
    to_mediator = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cht-interop")
    router = OpenHimRouter(to_mediator)
    core = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=router.app()), base_url="http://openhim-core:5001", auth=CLIENT_AUTH
    )
    async with to_mediator, core:
        await register_requester(core)
        patient = await push_patient(core)
        res = await core.post("/mediator/service-request", json=service_request_body(patient))

    assert res.status_code == 201
    core_id = res.headers["x-openhim-transactionid"]
    assert res.headers["x-transaction-id"] == core_id  # through core's response headers to its client
    rows = await journal_rows(services)
    assert [r.transaction_id for r in reversed(rows)] == [t["_id"] for t in router.transactions]
    (row,) = [r for r in rows if r.transaction_id == core_id]
    tx = router.transactions[-1]
    assert row.outcome == tx["status"] and row.properties == tx["properties"]


async def test_external_fhir_calls_are_the_same_orchestrations(
    external_mediator: Any,  # noqa: F811
    cht: ChtDouble,
) -> None:
    services: Services = external_mediator.state.services
    transport = httpx.ASGITransport(app=external_mediator)
    async with httpx.AsyncClient(transport=transport, base_url="http://mediator", auth=CLIENT_AUTH) as client:
        await register_requester(client)
        patient = await push_patient(client)
        res = await client.post(
            "/mediator/service-request", json=service_request_body(patient), headers=OPENHIM
        )

    doc = res.json()
    assert res.headers["x-transaction-id"] == TX_ID
    (row,) = await journal_rows(services, store.Filters(path="/mediator/service-request"))
    entry = await full(services, row)
    assert entry.transaction_id == TX_ID
    assert len(entry.orchestrations) == len(doc["orchestrations"]) > 0
    for kept, answered in zip(entry.orchestrations, doc["orchestrations"], strict=True):
        # bodies are cut to JOURNAL_MAX_BODY_CHARS in the journal; everything else is the same record
        for part in ("request", "response"):
            assert {k: v for k, v in kept[part].items() if k != "body"} == {
                k: v for k, v in answered[part].items() if k != "body"
            }
            assert answered[part]["body"].startswith(kept[part]["body"].split("… [")[0])
        assert kept["name"] == answered["name"]
    assert entry.outcome == doc["status"] == "Successful"
