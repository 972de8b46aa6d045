"""One contract for both FhirClient implementations: in-process (the store) and HTTP (our own app
served on a real loopback port). Whatever the mediator does through one must work through the other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cht_interop.app import create_app
from cht_interop.db import Database
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir.client import FhirClient
from cht_interop.fhir.errors import (
    InvalidRequest,
    PreconditionFailed,
    ResourceGone,
    ResourceNotFound,
    Unprocessable,
    VersionConflict,
)
from cht_interop.fhir.http_client import HttpFhirClient
from cht_interop.fhir.inprocess import InProcessFhirClient
from tests.conftest import CLIENT_AUTH, make_settings
from tests.fhir.conftest import patient
from tests.support.live import serve_in_thread


@dataclass
class Harness:
    fhir: FhirClient
    db: Database
    sent: list[httpx.Request] = field(default_factory=list)


@pytest.fixture(params=["in-process", "http"])
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str
) -> AsyncIterator[Harness]:
    settings = make_settings(tmp_path, database_url)
    db = Database(database_url)
    if request.param == "in-process":
        app = create_app(settings, run_worker=False)
        async with app.router.lifespan_context(app):
            fhir = app.state.services.fhir
            assert isinstance(fhir, InProcessFhirClient)
            yield Harness(fhir, db)
    else:
        app = create_app(settings, run_worker=False)
        sent: list[httpx.Request] = []

        async def record(req: httpx.Request) -> None:
            sent.append(req)

        with serve_in_thread(app) as base:
            async with httpx.AsyncClient(event_hooks={"request": [record]}, timeout=30) as http:
                yield Harness(HttpFhirClient(f"{base}/fhir", http, auth=CLIENT_AUTH, db=db), db, sent)
    await db.dispose()


async def _jobs(db: Database, kind: str) -> list[dict[str, Any]]:
    async with db.connect() as conn:
        return [j.payload for j in reversed(await outbox.list_jobs(conn, kind=kind))]


async def test_create_read_update_delete(harness: Harness) -> None:
    fhir = harness.fhir
    out = await fhir.create({**patient("c-1"), "id": "ignored"})
    assert out.created and out.status == 201
    pid = out.resource["id"]
    assert pid != "ignored" and out.resource["meta"]["versionId"] == "1"
    assert (await fhir.read("Patient", pid))["identifier"] == [{"system": "cht", "value": "c-1"}]
    updated = await fhir.update({**out.resource, "gender": "male"}, if_match='W/"1"')
    assert not updated.created and updated.resource["meta"]["versionId"] == "2"
    with pytest.raises(VersionConflict):
        await fhir.update({**out.resource, "gender": "other"}, if_match='W/"1"')
    await fhir.delete("Patient", pid)
    with pytest.raises(ResourceGone):
        await fhir.read("Patient", pid)
    with pytest.raises(ResourceNotFound):
        await fhir.read("Patient", "nobody")
    await fhir.delete("Patient", "nobody")  # deleting what never existed is fine


async def test_conditional_create(harness: Harness) -> None:
    first = await harness.fhir.create(patient("cc-1"), if_none_exist="identifier=cht|cc-1")
    again = await harness.fhir.create(patient("cc-1"), if_none_exist="identifier=cht|cc-1")
    assert first.created and not again.created and again.status == 200
    assert again.resource["id"] == first.resource["id"]
    await harness.fhir.create(patient("cc-1"))
    with pytest.raises(PreconditionFailed):
        await harness.fhir.create(patient("cc-1"), if_none_exist="identifier=cc-1")


async def test_update_as_create_with_client_id(harness: Harness) -> None:
    out = await harness.fhir.update({**patient("u-1"), "id": "pat-u-1"})
    assert out.created and out.resource["id"] == "pat-u-1"


async def test_search_and_search_all(harness: Harness) -> None:
    fhir = harness.fhir
    ids = [(await fhir.create(patient(f"s-{n}", system="contract"))).resource["id"] for n in range(5)]
    bundle = await fhir.search("Patient", {"identifier": "contract|", "_count": "2"})
    assert bundle["total"] == 5 and len(bundle["entry"]) == 2
    everything = await fhir.search_all("Patient", [("identifier", "contract|"), ("_count", "2")])
    assert [r["id"] for r in everything] == ids
    empty = await fhir.search("Patient", {"identifier": "nobody"})
    assert empty["total"] == 0 and "entry" not in empty
    with pytest.raises(InvalidRequest):
        await fhir.search("Patient", {"banana": "1"})
    if harness.sent:  # over HTTP every search asks HAPI not to answer from its cache
        searches = [r for r in harness.sent if r.method == "GET" and r.url.path == "/fhir/Patient"]
        assert searches and all(r.headers["cache-control"] == "no-cache" for r in searches)
        assert all(r.headers["authorization"].startswith("Basic ") for r in harness.sent)


async def test_validation_errors_are_typed(harness: Harness) -> None:
    with pytest.raises(InvalidRequest) as bad:
        await harness.fhir.create(patient(gender="banana"))
    assert "gender" in bad.value.diagnostics
    with pytest.raises(Unprocessable):
        await harness.fhir.create(
            {
                "resourceType": "Subscription",
                "status": "requested",
                "criteria": "Nope?x=1",
                "channel": {"type": "rest-hook", "endpoint": "https://x.example"},
            }
        )
    with pytest.raises(ResourceNotFound):
        await harness.fhir.create(
            {"resourceType": "Encounter", "subject": {"reference": "Patient?identifier=zz"}}
        )


async def test_transaction_with_jobs(harness: Harness) -> None:
    urn = "urn:uuid:11111111-2222-4333-8444-555555555555"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": urn, "resource": patient("t-1"), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "subject": {"reference": urn},
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
        ],
    }
    job = NewJob(kind="contract.test", target="cht", payload={"n": 1}, ordering_key="contract")
    out = await harness.fhir.transaction(bundle, jobs=[job])
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "201 Created"]
    pid = out["entry"][0]["response"]["location"].split("/")[1]
    encounters = await harness.fhir.search_all("Encounter", {"subject": f"Patient/{pid}"})
    assert len(encounters) == 1
    failing = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient("t-2", gender="banana"), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    with pytest.raises(InvalidRequest):
        await harness.fhir.transaction(
            failing, jobs=[NewJob(kind="contract.test", target="cht", payload={"n": 2})]
        )
    assert await _jobs(harness.db, "contract.test") == [{"n": 1}]
    assert (await harness.fhir.search("Patient", {"identifier": "t-2"}))["total"] == 0


async def test_vread(harness: Harness) -> None:
    created = (await harness.fhir.create(patient("v-1"))).resource
    await harness.fhir.update({**created, "gender": "male"})
    vread = harness.fhir.vread
    assert (await vread("Patient", created["id"], "1"))["gender"] == "female"
    assert (await vread("Patient", created["id"], "2"))["gender"] == "male"
