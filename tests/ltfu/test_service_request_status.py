"""The ServiceRequest follows its follow-up: ``completed`` by the CHW's answer, ``revoked`` when
cancelled, expired or refused by the CHT, and searchable by those statuses."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.ltfu.conftest import (
    encounter_body,
    fhir_all,
    push_patient,
    register_requester,
    service_request_body,
    task_of,
)

OUTCOME = {
    "url": "urn:cht-interop:ltfu-outcome",
    "valueCodeableConcept": {
        "coding": [{"system": "urn:cht-interop:CodeSystem/ltfu-outcome", "code": "not_located"}]
    },
}


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, object]:
    return getattr(request, "param", {})


async def start(client: httpx.AsyncClient, patient: str) -> str:
    res = await client.post("/mediator/service-request", json=service_request_body(patient))
    assert res.status_code == 201, res.text
    return res.headers["Location"].rsplit("/", 1)[1]


async def service_request(client: httpx.AsyncClient, sr_id: str) -> dict[str, Any]:
    res = await client.get(f"/fhir/ServiceRequest/{sr_id}")
    assert res.status_code == 200, res.text
    body: dict[str, Any] = res.json()
    return body


async def ids_with_status(client: httpx.AsyncClient, status: str) -> set[str]:
    return {sr["id"] for sr in await fhir_all(client, "ServiceRequest", status=status)}


async def test_the_chw_answer_completes_the_service_request(client: httpx.AsyncClient, drain: Any) -> None:
    await register_requester(client)
    answered, waiting = await push_patient(client), await push_patient(client)
    sr_id, open_id = await start(client, answered), await start(client, waiting)
    await drain()
    assert (await service_request(client, sr_id))["status"] == "active"

    body = encounter_body(
        answered, "rep-1", basedOn=[{"reference": f"ServiceRequest/{sr_id}"}], extension=[OUTCOME]
    )
    res = await client.post("/mediator/encounter", json=body)
    assert res.status_code == 201, res.text

    sr = await service_request(client, sr_id)
    assert sr["status"] == "completed"
    assert sr["meta"]["versionId"] == "2"
    assert "note" not in sr
    assert task_of(await fhir_all(client, "Task"), sr_id)["status"] == "completed"
    assert await ids_with_status(client, "completed") == {sr_id}
    assert await ids_with_status(client, "active") == {open_id}

    # the same report pushed again changes nothing more
    assert (await client.post("/mediator/encounter", json=body)).status_code == 200
    assert (await service_request(client, sr_id))["meta"]["versionId"] == "2"
    # a cancel after the answer leaves the completed request as it is
    cancel = await client.post(f"/mediator/service-request/{sr_id}/$cancel")
    assert cancel.status_code == 200, cancel.text
    assert cancel.json()["status"] == "completed"


async def test_a_report_without_our_ids_completes_every_open_request_of_the_patient(
    client: httpx.AsyncClient, drain: Any
) -> None:
    await register_requester(client, "org-1")
    await register_requester(client, "org-2", "https://emr2.example.org/cb")
    patient = await push_patient(client)
    first = await start(client, patient)
    res = await client.post("/mediator/service-request", json=service_request_body(patient, "org-2"))
    assert res.status_code == 201, res.text
    second = res.headers["Location"].rsplit("/", 1)[1]
    await drain()
    report = encounter_body(patient, "rep-2")
    assert (await client.post("/mediator/encounter", json=report)).status_code == 201
    assert await ids_with_status(client, "completed") == {first, second}


async def test_cancel_revokes_the_service_request(client: httpx.AsyncClient, drain: Any) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    sr_id = await start(client, patient)
    await drain()
    res = await client.post(
        f"/mediator/service-request/{sr_id}/$cancel",
        json={"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "Transferred"}]},
    )
    assert res.status_code == 200, res.text
    assert res.json()["status"] == "revoked"
    assert await ids_with_status(client, "revoked") == {sr_id}
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert (task["status"], task["statusReason"]["text"]) == ("cancelled", "Transferred")

    # the CHW's late answer is kept as data; the request stays revoked
    late = encounter_body(patient, "rep-late", basedOn=[{"reference": f"ServiceRequest/{sr_id}"}])
    assert (await client.post("/mediator/encounter", json=late)).status_code == 201
    assert (await service_request(client, sr_id))["status"] == "revoked"


@pytest.mark.parametrize("settings_overrides", [{"FOLLOW_UP_EXPIRY_SECONDS": 0.5}], indirect=True)
async def test_expiry_revokes_the_service_request_with_the_reason_in_a_note(
    client: httpx.AsyncClient, drain: Any
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    sr_id = await start(client, patient)
    await drain()
    await asyncio.sleep(0.6)
    await drain()
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "failed"
    sr = await service_request(client, sr_id)
    assert sr["status"] == "revoked"
    (note,) = sr["note"]
    assert note["text"] == task["statusReason"]["text"]
    assert note["text"].startswith("Expired: no follow-up report from the CHT")
    assert await ids_with_status(client, "revoked") == {sr_id}
    assert await ids_with_status(client, "active") == set()


@pytest.mark.parametrize("settings_overrides", [{"CHT_PASSWORD": "wrong-password"}], indirect=True)
async def test_a_follow_up_the_cht_refused_revokes_its_service_request(
    client: httpx.AsyncClient, drain: Any
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    sr_id = await start(client, patient)
    await drain()
    assert task_of(await fhir_all(client, "Task"), sr_id)["status"] == "failed"
    sr = await service_request(client, sr_id)
    assert sr["status"] == "revoked"
    assert sr["note"][0]["text"].startswith("The CHT did not take the follow-up")


async def test_a_request_the_requester_ended_is_not_overwritten(
    client: httpx.AsyncClient, drain: Any
) -> None:
    """The requester marks its request entered-in-error through /fhir; the CHW's answer then
    completes the Task but leaves the requester's status alone."""
    await register_requester(client)
    patient = await push_patient(client)
    sr_id = await start(client, patient)
    await drain()
    sr = await service_request(client, sr_id)
    res = await client.put(f"/fhir/ServiceRequest/{sr_id}", json={**sr, "status": "entered-in-error"})
    assert res.status_code == 200, res.text
    body = encounter_body(patient, "rep-3", basedOn=[{"reference": f"ServiceRequest/{sr_id}"}])
    assert (await client.post("/mediator/encounter", json=body)).status_code == 201
    assert task_of(await fhir_all(client, "Task"), sr_id)["status"] == "completed"
    assert (await service_request(client, sr_id))["status"] == "entered-in-error"
