"""The real app (embedded FHIR store, outbox) over ASGI, with the CHT double on a loopback port."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cht_interop.app import create_app
from cht_interop.delivery import outbox
from cht_interop.delivery.worker import OutboxWorker
from cht_interop.services import Services
from tests.conftest import CLIENT_AUTH, make_settings
from tests.support.cht_double import ChtDouble
from tests.support.live import serve_in_thread

CALLBACK = "https://emr.example.org/fhir-callback"
CONNECTION = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "hl7-fhir-rest",
}


@pytest.fixture(scope="module")
def cht_server() -> Iterator[tuple[ChtDouble, str]]:
    double = ChtDouble()
    with serve_in_thread(double.app) as url:
        yield double, url


@pytest.fixture
def cht(cht_server: tuple[ChtDouble, str]) -> ChtDouble:
    double, _url = cht_server
    double.reset()
    return double


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def app(
    tmp_path: Path, database_url: str, cht_server: tuple[ChtDouble, str], settings_overrides: dict[str, Any]
) -> AsyncIterator[Any]:
    _double, url = cht_server
    values: dict[str, Any] = {
        "CHT_URL": url,
        "CHT_USERNAME": "admin",
        "CHT_PASSWORD": "pass-admin-1",
        "DELIVERY_HORIZON_SECONDS": 5,
    }
    settings = make_settings(tmp_path, database_url, **{**values, **settings_overrides})
    application = create_app(settings, run_worker=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def services(app: Any) -> Services:
    s: Services = app.state.services
    return s


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", auth=CLIENT_AUTH) as c:
        yield c


@pytest.fixture
def drain(services: Services) -> Any:
    """Run the outbox worker until nothing is due (what the worker process does in production)."""

    async def run() -> list[Any]:
        worker = OutboxWorker(services.db, services.handlers, services.settings)
        return await worker.drain()

    return run


@pytest.fixture
def drain_held(services: Services) -> Any:
    """``drain``, with the worker's clock held where the call starts: what is due then runs (the
    CHT records and their acceptance), nothing that falls due during it (a short expiry window).
    On a busy machine the real clock passed a half-second window within one drain, and the expiry
    ran before the test's next step."""

    async def run() -> list[Any]:
        held = outbox.utcnow()
        worker = OutboxWorker(services.db, services.handlers, services.settings, clock=lambda: held)
        return await worker.drain()

    return run


def endpoint_body(identifier: str = "callback-1", address: str = CALLBACK) -> dict[str, Any]:
    return {
        "resourceType": "Endpoint",
        "identifier": [{"system": "official", "value": identifier}],
        "connectionType": CONNECTION,
        "address": address,
    }


def organization_body(endpoint_id: str, identifier: str = "org-1", name: Any = "athena") -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "identifier": [{"system": "official", "value": identifier}],
        "name": name,
        "endpoint": [{"reference": f"Endpoint/{endpoint_id}"}],
    }


def patient_body(cht_id: str | None = None, family: str = "Doe") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "cht", "value": cht_id or str(uuid.uuid4())}],
        "name": [{"family": family, "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1990-04-01",
    }


def service_request_body(patient_cht_id: str, org: str = "org-1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "intent": "order",
        "status": "active",
        "subject": {"reference": f"Patient/{patient_cht_id}"},
        "requester": {"reference": f"Organization/{org}"},
        "reasonCode": [{"text": "Missed ART refill"}],
    }
    body.update(extra)
    return body


def encounter_body(patient_cht_id: str, report_id: str | None = None, **extra: Any) -> dict[str, Any]:
    identifiers = [{"system": "cht", "value": patient_cht_id}]
    if report_id:
        identifiers.append({"system": "cht-report", "value": report_id})
    body: dict[str, Any] = {
        "resourceType": "Encounter",
        "identifier": identifiers,
        "status": "finished",
        "class": "outpatient",
        "type": [{"text": "Community health worker visit"}],
        "subject": {"reference": f"Patient/?identifier={patient_cht_id}"},
        "participant": [{"type": [{"text": "Community health worker"}]}],
    }
    body.update(extra)
    return body


async def register_requester(client: httpx.AsyncClient, org: str = "org-1", address: str = CALLBACK) -> str:
    """Endpoint + Organization; returns the Organization id."""
    ep = await client.post("/mediator/endpoint", json=endpoint_body(f"cb-{org}", address))
    assert ep.status_code in (200, 201), ep.text
    res = await client.post("/mediator/organization", json=organization_body(ep.json()["id"], org))
    assert res.status_code in (200, 201), res.text
    return str(res.json()["id"])


async def push_patient(client: httpx.AsyncClient, cht_id: str | None = None) -> str:
    cht_id = cht_id or str(uuid.uuid4())
    res = await client.post("/mediator/patient", json=patient_body(cht_id))
    assert res.status_code in (200, 201), res.text
    return cht_id


async def post_list_of_new_patients(client: httpx.AsyncClient, count: int) -> None:
    """A requester, ``count`` new patients and a list of follow-ups, one per patient: their Tasks
    are written, their CHT records wait in the outbox."""
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(count)]
    entries = [{"resource": service_request_body(p)} for p in patients]
    res = await client.post(
        "/mediator/service-request", json={"resourceType": "Bundle", "type": "batch", "entry": entries}
    )
    assert res.status_code == 200, res.text


async def jobs_of(services: Services, kind: str, status: str | None = None) -> list[Any]:
    from cht_interop.delivery.outbox import list_jobs

    async with services.db.transaction() as conn:
        return await list_jobs(conn, kind=kind, status=status, limit=100_000)


async def fhir_all(client: httpx.AsyncClient, rtype: str, **params: str) -> list[dict[str, Any]]:
    res = await client.get(f"/fhir/{rtype}", params={"_count": "1000", **params})
    assert res.status_code == 200, res.text
    return [e["resource"] for e in res.json().get("entry", [])]


def task_of(tasks: list[dict[str, Any]], sr_id: str) -> dict[str, Any]:
    (task,) = [t for t in tasks if t["basedOn"] == [{"reference": f"ServiceRequest/{sr_id}"}]]
    return task
