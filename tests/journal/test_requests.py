"""A row per request to /mediator and /fhir: the id answered, what is kept, what never is."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
from sqlalchemy import select

from cht_interop.journal import store
from cht_interop.journal.tables import journal_entries, journal_refs
from cht_interop.services import Services
from tests.conftest import CLIENT_AUTH
from tests.journal.conftest import full, journal_rows
from tests.ltfu.conftest import endpoint_body, organization_body, push_patient, service_request_body
from tests.support.cht_double import ChtDouble

TX_ID = "65a1b2c3d4e5f60718293a4b"
OPENHIM = {"X-OpenHIM-TransactionID": TX_ID, "X-OpenHIM-ClientID": "interop-client"}
CALLBACK_TOKEN = "Bearer cb-token-7f3a9e2d41"


async def register_with_secret_header(client: httpx.AsyncClient) -> None:
    endpoint = endpoint_body()
    endpoint["header"] = [f"Authorization: {CALLBACK_TOKEN}", "X-Trace: kept"]
    res = await client.post("/mediator/endpoint", json=endpoint)
    assert res.status_code == 201, res.text
    res = await client.post("/mediator/organization", json=organization_body(res.json()["id"]))
    assert res.status_code == 201, res.text


async def test_follow_up_through_openhim_leaves_its_row(
    client: httpx.AsyncClient, services: Services, cht: ChtDouble
) -> None:
    await register_with_secret_header(client)
    patient = await push_patient(client)
    body = service_request_body(patient)

    res = await client.post("/mediator/service-request", json=body, headers=OPENHIM)

    assert res.status_code == 201
    assert res.headers["x-transaction-id"] == TX_ID
    doc = res.json()
    assert doc["response"]["headers"]["x-transaction-id"] == TX_ID  # what core hands its client
    (row,) = [e for e in await journal_rows(services) if e.transaction_id == TX_ID]
    entry = await full(services, row)
    assert entry.kind == "request"
    assert (entry.method, entry.path, entry.query, entry.status) == (
        "POST",
        "/mediator/service-request",
        None,
        201,
    )
    assert entry.client == "interop-client"
    assert entry.outcome == "Successful" == doc["status"]
    assert entry.properties == doc["properties"]
    assert entry.follow_up_id == doc["properties"]["followUpId"]
    assert entry.orchestrations == doc["orchestrations"]  # one record for both: the store's calls
    assert {o["request"]["host"] for o in entry.orchestrations} == {"embedded FHIR store"}
    assert entry.duration_ms > 0
    assert orjson.loads(entry.request_body or "") == body
    plain = orjson.loads(entry.response_body or "")
    assert plain["resourceType"] == "Subscription"
    (registration,) = await journal_rows(services, store.Filters(path="/mediator/endpoint"))
    sent = orjson.loads((await full(services, registration)).request_body or "")
    assert sent["header"] == ["Authorization: ***", "X-Trace: kept"]


async def test_every_request_gets_an_id_and_a_row(client: httpx.AsyncClient, services: Services) -> None:
    res = await client.get("/fhir/Patient", params={"family": "Doe"})
    unknown = await client.get("/fhir/Patient/nope")
    refused = await client.get("/mediator/ltfu-lists/x", auth=("interop-client", "wrong"))
    health = await client.get("/health/live")

    ids = [r.headers["x-transaction-id"] for r in (res, unknown, refused)]
    assert all(uuid.UUID(i) for i in ids) and len(set(ids)) == 3
    assert "x-transaction-id" not in health.headers  # only /mediator and /fhir are recorded
    rows = {e.transaction_id: e for e in await journal_rows(services)}
    assert set(rows) == set(ids)
    search, missing, denied = (rows[i] for i in ids)
    assert (search.method, search.path, search.query, search.status) == (
        "GET",
        "/fhir/Patient",
        "family=Doe",
        200,
    )
    assert search.outcome == "Successful" and search.client == "interop-client"
    assert (missing.status, missing.outcome) == (404, "Completed")
    assert (denied.status, denied.client) == (401, None)


async def test_fhir_request_with_openhim_id_keeps_it(client: httpx.AsyncClient, services: Services) -> None:
    res = await client.get("/fhir/metadata", headers=OPENHIM)
    assert res.headers["content-type"].startswith("application/fhir+json")  # /fhir is never wrapped
    assert res.headers["x-transaction-id"] == TX_ID
    (row,) = await journal_rows(services)
    assert (row.transaction_id, row.path) == (TX_ID, "/fhir/metadata")


async def test_secrets_are_never_stored(
    client: httpx.AsyncClient, services: Services, cht: ChtDouble, drain: Any
) -> None:
    import base64

    await register_with_secret_header(client)
    patient = await push_patient(client)
    await client.post("/mediator/service-request", json=service_request_body(patient), headers=OPENHIM)
    await client.post(
        "/fhir/Endpoint",
        json={**endpoint_body("e-2"), "address": "https://user:url-pass-93ab@emr.example.org/cb"},
    )
    await drain()  # the CHT submission, sent with the CHT admin's Basic credentials
    rows = await journal_rows(services)
    assert len(rows) == 6 and rows[0].path == "cht.record"
    async with services.db.connect() as conn:
        everything = repr((await conn.execute(select(journal_entries))).all())
        everything += repr((await conn.execute(select(journal_refs))).all())
    basic = base64.b64encode(f"{CLIENT_AUTH[0]}:{CLIENT_AUTH[1]}".encode()).decode()
    cht_basic = base64.b64encode(b"admin:pass-admin-1").decode()
    for secret in (CLIENT_AUTH[1], basic, "cb-token-7f3a9e2d41", "url-pass-93ab", "pass-admin-1", cht_basic):
        assert secret not in everything
    assert "Authorization: ***" in everything  # the Endpoint's header line, redacted, is kept


async def test_list_filters_and_pages(client: httpx.AsyncClient, services: Services) -> None:
    for i in range(7):
        await client.get(f"/fhir/Patient/p{i}")
    await client.get("/fhir/metadata")
    await journal_rows(services)  # flushed
    async with services.db.connect() as conn:
        first = await store.list_entries(conn, store.Filters(status=404), limit=3)
        second = await store.list_entries(conn, store.Filters(status=404), after=first.next_cursor, limit=3)
        third = await store.list_entries(
            conn, store.Filters(status_class=4), after=second.next_cursor, limit=3
        )
        ok = await store.list_entries(conn, store.Filters(path="/fhir/metadata", client="interop-client"))
        nobody = await store.list_entries(conn, store.Filters(client="someone-else"))
    paths = [e.path for e in first.entries + second.entries + third.entries]
    assert paths == [f"/fhir/Patient/p{i}" for i in reversed(range(7))]  # newest first, no repeats
    assert third.next_cursor is None
    assert [e.path for e in ok.entries] == ["/fhir/metadata"]
    assert nobody.entries == []


async def test_an_unexpected_error_is_recorded_without_its_secrets(
    client: httpx.AsyncClient, services: Services, app: Any, monkeypatch: Any
) -> None:
    async def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("db gone, password=hunter2")

    monkeypatch.setattr(app.state.services.ltfu.patients, "upsert", boom)
    res = await client.post("/mediator/patient", json={"resourceType": "Patient"}, headers=OPENHIM)

    assert res.status_code == 500 and res.headers["x-transaction-id"] == TX_ID
    (row,) = await journal_rows(services)
    assert (row.transaction_id, row.status, row.outcome) == (TX_ID, 500, "Failed")
    assert row.error == "RuntimeError: db gone, password=***"
