"""POST /mediator/service-request: the follow-up from request to CHT record, duplicates, failures, expiry."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from cht_interop.ltfu.resources import CHT_RECORD_SYSTEM
from cht_interop.services import Services
from tests.ltfu.conftest import (
    CALLBACK,
    encounter_body,
    fhir_all,
    jobs_of,
    push_patient,
    register_requester,
    service_request_body,
    task_of,
)
from tests.support.cht_double import ChtDouble


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, object]:
    return getattr(request, "param", {})


async def start(client: httpx.AsyncClient, patient: str, org: str = "org-1", **extra: Any) -> httpx.Response:
    return await client.post("/mediator/service-request", json=service_request_body(patient, org, **extra))


async def test_follow_up_committed_before_201_and_submitted_to_the_cht(
    client: httpx.AsyncClient, services: Services, drain: Any, cht: ChtDouble
) -> None:
    org_id = await register_requester(client)
    patient = await push_patient(client)

    res = await start(client, patient)

    assert res.status_code == 201
    sub = res.json()
    assert sub["resourceType"] == "Subscription"
    assert sub["criteria"] == f"Encounter?identifier={patient}"
    assert sub["channel"] == {
        "type": "rest-hook",
        "endpoint": CALLBACK,
        "payload": "application/fhir+json",
        "header": ["Content-Type: application/fhir+json"],
    }
    sr_id = res.headers["Location"].rsplit("/", 1)[1]
    assert "/fhir/Task/" in res.headers["Link"]
    # everything is in the store and the CHT job in the outbox before any worker ran
    (sr,) = await fhir_all(client, "ServiceRequest")
    assert sr["id"] == sr_id
    assert sr["subject"]["reference"].startswith("Patient/")
    assert sr["requester"]["reference"] == f"Organization/{org_id}"
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "requested"
    assert task["for"] == {"reference": sr["subject"]["reference"]}
    assert task["requester"] == {"reference": f"Organization/{org_id}"}
    assert task["input"][0]["valueReference"] == {"reference": f"Subscription/{sub['id']}"}
    assert len(await jobs_of(services, "cht.record", "pending")) == 1
    assert cht.records == {}

    await drain()

    (record,) = cht.records_of_form("INTEROP_FOLLOW_UP")
    assert record["fields"] == {
        "patient_uuid": patient,
        "service_request_id": sr_id,
        "task_id": task["id"],
        "reason": "Missed ART refill",
        "requester": "athena",
        "requester_id": "org-1",
    }
    sent = cht.requests[-1]
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["authorization"].startswith("Basic ")
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "accepted"
    assert {"system": CHT_RECORD_SYSTEM, "value": record["_id"]} in task["identifier"]
    assert task["restriction"]["period"]["end"]
    # the requesting system can find its follow-up by the ServiceRequest
    found = await fhir_all(client, "Task", **{"based-on": f"ServiceRequest/{sr_id}"})
    assert [t["id"] for t in found] == [task["id"]]


async def test_unknown_patient_is_404_retry_later_and_nothing_written(
    client: httpx.AsyncClient, services: Services
) -> None:
    await register_requester(client)
    res = await start(client, str(uuid.uuid4()))
    assert res.status_code == 404
    assert "Retry later" in res.json()["issue"][0]["diagnostics"]
    assert await fhir_all(client, "ServiceRequest") == []
    assert await fhir_all(client, "Task") == []
    assert await fhir_all(client, "Subscription") == []
    assert await jobs_of(services, "cht.record") == []


async def test_unknown_organization_is_404(client: httpx.AsyncClient) -> None:
    patient = await push_patient(client)
    res = await start(client, patient, org="nobody")
    assert res.status_code == 404
    assert "Organization not found" in res.json()["issue"][0]["diagnostics"]
    assert await fhir_all(client, "ServiceRequest") == []


async def test_organization_without_endpoint_is_400(client: httpx.AsyncClient) -> None:
    patient = await push_patient(client)
    org = {"resourceType": "Organization", "identifier": [{"value": "bare"}], "name": "bare"}
    assert (await client.post("/fhir/Organization", json=org)).status_code == 201
    res = await start(client, patient, org="bare")
    assert res.status_code == 400
    assert res.json()["issue"][0]["diagnostics"] == "Organization has no endpoint attached"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"intent": None}, '"intent" is required'),
        ({"status": None}, '"status" is required'),
        ({"subject": {"reference": "Patient?identifier=x"}}, "Patient/<CHT id>"),
        ({"requester": {"reference": "Practitioner/1"}}, "Organization/<organization identifier>"),
    ],
)
async def test_invalid_service_request_is_400(
    client: httpx.AsyncClient, change: dict[str, Any], fragment: str
) -> None:
    patient = await push_patient(client)
    body = {k: v for k, v in {**service_request_body(patient), **change}.items() if v is not None}
    res = await client.post("/mediator/service-request", json=body)
    assert res.status_code == 400
    assert fragment in res.json()["issue"][0]["diagnostics"]
    assert await fhir_all(client, "ServiceRequest") == []


async def test_same_patient_and_requester_while_open_returns_the_existing_follow_up(
    client: httpx.AsyncClient, drain: Any, cht: ChtDouble
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    first = await start(client, patient)
    again = await start(client, patient)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    await drain()
    assert len(await fhir_all(client, "Task")) == 1
    assert len(await fhir_all(client, "Subscription")) == 1
    assert len(cht.records_of_form("INTEROP_FOLLOW_UP")) == 1


async def test_same_identifier_returns_the_existing_follow_up_even_when_ended(
    client: httpx.AsyncClient, drain: Any, cht: ChtDouble
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    ident = [{"system": "https://emr.example.org/ltfu", "value": "LTFU-77"}]
    first = await start(client, patient, identifier=ident)
    await drain()
    assert (
        await client.post("/mediator/encounter", json=encounter_body(patient, "rep-1"))
    ).status_code == 201
    again = await start(client, patient, identifier=ident)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert len(await fhir_all(client, "ServiceRequest")) == 1


async def test_concurrent_duplicates_make_one_follow_up(client: httpx.AsyncClient) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    answers = await asyncio.gather(*(start(client, patient) for _ in range(5)))
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(await fhir_all(client, "Task")) == 1


async def test_another_requester_gets_its_own_follow_up(client: httpx.AsyncClient) -> None:
    await register_requester(client, "org-1")
    await register_requester(client, "org-2", "https://other.example.org/cb")
    patient = await push_patient(client)
    a = await start(client, patient, "org-1")
    b = await start(client, patient, "org-2")
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]
    assert b.json()["channel"]["endpoint"] == "https://other.example.org/cb"


async def test_after_completion_a_new_request_starts_a_new_follow_up(
    client: httpx.AsyncClient, drain: Any
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    first = await start(client, patient)
    await drain()
    await client.post("/mediator/encounter", json=encounter_body(patient, "rep-1"))
    second = await start(client, patient)
    assert second.status_code == 201
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["status"] in ("requested", "active")


async def test_transient_cht_failures_are_retried(
    client: httpx.AsyncClient, drain: Any, cht: ChtDouble, services: Services
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    sr_id = (await start(client, patient)).headers["Location"].rsplit("/", 1)[1]
    cht.fail_next(1, 503, b"<html>upstream restarting</html>", content_type="text/html")
    cht.fail_next(1, 500, {"code": 500, "error": "Server error"})
    for _ in range(60):
        await drain()
        if cht.records_of_form("INTEROP_FOLLOW_UP"):
            break
        await asyncio.sleep(0.1)
    assert len(cht.records_of_form("INTEROP_FOLLOW_UP")) == 1
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "accepted"
    (job,) = await jobs_of(services, "cht.record")
    assert job.status == "done"
    assert job.attempts == 3


async def test_permanent_cht_rejection_fails_the_task_and_switches_the_subscription_off(
    client: httpx.AsyncClient, drain: Any, cht: ChtDouble, services: Services
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    res = await start(client, patient)
    sr_id = res.headers["Location"].rsplit("/", 1)[1]
    cht.fail_next(
        1, 500, {"code": 500, "error": "Server error", "details": "Form not found: INTEROP_FOLLOW_UP"}
    )
    await drain()
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "failed"
    assert "Form not found: INTEROP_FOLLOW_UP" in task["statusReason"]["text"]
    sub = (await client.get(f"/fhir/Subscription/{res.json()['id']}")).json()
    assert sub["status"] == "off"
    (job,) = await jobs_of(services, "cht.record")
    assert job.status == "dead"
    # a failed follow-up is not open: the requester may try again
    assert (await start(client, patient)).status_code == 201


@pytest.mark.parametrize("settings_overrides", [{"CHT_PASSWORD": "wrong-password"}], indirect=True)
async def test_cht_refusing_our_credentials_fails_the_task(client: httpx.AsyncClient, drain: Any) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    sr_id = (await start(client, patient)).headers["Location"].rsplit("/", 1)[1]
    await drain()
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "failed"
    assert "401" in task["statusReason"]["text"]
    assert "wrong-password" not in task["statusReason"]["text"]


@pytest.mark.parametrize("settings_overrides", [{"FOLLOW_UP_EXPIRY_SECONDS": 0.5}], indirect=True)
async def test_follow_up_expires_after_the_window(
    client: httpx.AsyncClient, drain: Any, drain_held: Any
) -> None:
    await register_requester(client)
    expiring, completed = await push_patient(client), await push_patient(client)
    a = await start(client, expiring)
    b = await start(client, completed)
    await drain_held()  # the CHT records, not the expiry (its window may pass meanwhile)
    await client.post("/mediator/encounter", json=encounter_body(completed, "rep-b"))
    await asyncio.sleep(0.6)
    await drain()
    tasks = await fhir_all(client, "Task")
    expired = task_of(tasks, a.headers["Location"].rsplit("/", 1)[1])
    done = task_of(tasks, b.headers["Location"].rsplit("/", 1)[1])
    assert expired["status"] == "failed"
    assert expired["statusReason"]["text"].startswith("Expired")
    assert (await client.get(f"/fhir/Subscription/{a.json()['id']}")).json()["status"] == "off"
    assert done["status"] == "completed"


async def test_identifier_of_a_service_request_made_outside_the_mediator_is_a_conflict(
    client: httpx.AsyncClient,
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    (stored_patient,) = await fhir_all(client, "Patient")
    ident = [{"system": "https://emr.example.org/ltfu", "value": "LTFU-9"}]
    direct = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "identifier": ident,
        "subject": {"reference": f"Patient/{stored_patient['id']}"},
    }
    assert (await client.post("/fhir/ServiceRequest", json=direct)).status_code == 201
    res = await start(client, patient, identifier=ident)
    assert res.status_code == 409
    assert "not created through the mediator" in res.json()["issue"][0]["diagnostics"]
    assert await fhir_all(client, "Task") == []


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {"PUBLIC_BASE_URL": "https://interop.example.org/fhir"},
        {"PUBLIC_BASE_URL": "https://interop.example.org"},
    ],
    indirect=True,
)
async def test_links_use_public_base_url_with_one_fhir_segment(
    client: httpx.AsyncClient, cht: ChtDouble
) -> None:
    """PUBLIC_BASE_URL written with or without /fhir: the mediator and the FHIR routes agree on links."""
    await register_requester(client)
    patient = await push_patient(client)

    res = await start(client, patient)

    assert res.status_code == 201, res.text
    sr_id = res.headers["Location"].rsplit("/", 1)[1]
    assert res.headers["Location"] == f"https://interop.example.org/fhir/ServiceRequest/{sr_id}"
    assert "https://interop.example.org/fhir/Task/" in res.headers["Link"]
    assert "/fhir/fhir/" not in res.headers["Link"]
    found = await client.get("/fhir/ServiceRequest", params={"_id": sr_id})
    assert found.json()["entry"][0]["fullUrl"] == res.headers["Location"]
