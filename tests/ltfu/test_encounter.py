"""POST /mediator/encounter: reference and contract shapes, dedup, completing the follow-up, callback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from cht_interop.services import Services
from tests.ltfu.conftest import (
    encounter_body,
    fhir_all,
    jobs_of,
    push_patient,
    register_requester,
    service_request_body,
    task_of,
)
from tests.support.live import serve_in_thread
from tests.support.receiver import CallbackReceiver

OUTCOME = {
    "url": "urn:cht-interop:ltfu-outcome",
    "valueCodeableConcept": {
        "coding": [{"system": "urn:cht-interop:CodeSystem/ltfu-outcome", "code": "returned_to_care"}],
        "text": "Patient found and returning to care",
    },
}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"ALLOW_PRIVATE_CALLBACKS": True}


@pytest.fixture
def receiver() -> Iterator[tuple[CallbackReceiver, str]]:
    r = CallbackReceiver()
    with serve_in_thread(r.app()) as url:
        yield r, url


async def start(client: httpx.AsyncClient, patient: str) -> str:
    res = await client.post("/mediator/service-request", json=service_request_body(patient))
    assert res.status_code == 201, res.text
    return res.headers["Location"].rsplit("/", 1)[1]


async def test_reference_shape_stored_as_valid_r4(client: httpx.AsyncClient) -> None:
    patient = await push_patient(client)
    (stored_patient,) = await fhir_all(client, "Patient")
    res = await client.post("/mediator/encounter", json=encounter_body(patient))
    assert res.status_code == 201
    enc = res.json()
    assert enc["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "AMB",
        "display": "ambulatory",
    }
    assert enc["subject"] == {"reference": f"Patient/{stored_patient['id']}"}
    assert res.headers["Location"].endswith(f"/fhir/Encounter/{enc['id']}")


async def test_strict_r4_shape_with_plain_patient_reference(client: httpx.AsyncClient) -> None:
    patient = await push_patient(client)
    (stored_patient,) = await fhir_all(client, "Patient")
    body = encounter_body(
        patient,
        **{"class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"}},
        subject={"reference": f"Patient/{stored_patient['id']}"},
    )
    res = await client.post("/mediator/encounter", json=body)
    assert res.status_code == 201
    assert res.json()["class"]["code"] == "VR"


async def test_unknown_patient_is_404_and_nothing_written(client: httpx.AsyncClient) -> None:
    res = await client.post(
        "/mediator/encounter", json=encounter_body("3f1c7c1e-6c1a-4a55-9b8f-0e3c0b5d1a22", "rep-x")
    )
    assert res.status_code == 404
    assert await fhir_all(client, "Encounter") == []


async def test_invalid_encounter_is_400(client: httpx.AsyncClient) -> None:
    patient = await push_patient(client)
    res = await client.post("/mediator/encounter", json=encounter_body(patient, status="wrong_status"))
    assert res.status_code == 400
    assert 'Code "wrong_status" not found in value set' in res.json()["issue"][0]["diagnostics"]
    res = await client.post("/mediator/encounter", json=encounter_body(patient, participant=[]))
    assert res.status_code == 400
    assert await fhir_all(client, "Encounter") == []


async def test_repushed_report_is_stored_once(client: httpx.AsyncClient) -> None:
    patient = await push_patient(client)
    first = await client.post("/mediator/encounter", json=encounter_body(patient, "report-1"))
    again = await client.post("/mediator/encounter", json=encounter_body(patient, "report-1"))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert len(await fhir_all(client, "Encounter")) == 1


async def test_encounter_without_open_follow_up_is_data_and_changes_no_task(
    client: httpx.AsyncClient, drain: Any
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    sr_id = await start(client, patient)
    await drain()
    first = await client.post("/mediator/encounter", json=encounter_body(patient, "rep-1"))
    assert first.status_code == 201, first.text
    before = task_of(await fhir_all(client, "Task"), sr_id)
    assert before["status"] == "completed", before

    late = await client.post("/mediator/encounter", json=encounter_body(patient, "rep-2"))
    assert late.status_code == 201
    after = task_of(await fhir_all(client, "Task"), sr_id)
    assert after == before
    other = await push_patient(client)
    assert (await client.post("/mediator/encounter", json=encounter_body(other, "rep-3"))).status_code == 201
    assert len(await fhir_all(client, "Encounter")) == 3


async def test_completing_encounter_carries_the_outcome_into_the_task(
    client: httpx.AsyncClient, drain: Any, services: Services
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    sr_id = await start(client, patient)
    await drain()
    body = encounter_body(
        patient, "rep-1", basedOn=[{"reference": f"ServiceRequest/{sr_id}"}], extension=[OUTCOME]
    )
    res = await client.post("/mediator/encounter", json=body)
    assert res.status_code == 201
    enc = res.json()
    assert enc["basedOn"] == [{"reference": f"ServiceRequest/{sr_id}"}]
    assert enc["extension"] == [OUTCOME]
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "completed"
    assert {"type": {"text": "encounter"}, "valueReference": {"reference": f"Encounter/{enc['id']}"}} in task[
        "output"
    ]
    assert task["businessStatus"]["coding"][0]["code"] == "returned_to_care"
    # the notification for this Encounter is queued, owed: the same write switched the Subscription off
    (note,) = await jobs_of(services, "fhir.subscription-notification")
    assert (note.payload["resource_id"], note.payload["owed"]) == (enc["id"], True)
    sub = await client.get(f"/fhir/{task_input(task, 'subscription')}")
    assert sub.json()["status"] == "off"
    assert await jobs_of(services, "ltfu.subscription-off") == []


def task_input(task: dict[str, Any], text: str) -> str:
    """The reference of the Task's input of this type (``subscription``: its Subscription)."""
    (ref,) = [i["valueReference"]["reference"] for i in task["input"] if i["type"]["text"] == text]
    return str(ref)


async def test_basedon_an_unknown_service_request_is_kept_as_data(client: httpx.AsyncClient) -> None:
    patient = await push_patient(client)
    body = encounter_body(patient, "rep-1", basedOn=[{"reference": "ServiceRequest/does-not-exist"}])
    res = await client.post("/mediator/encounter", json=body)
    assert res.status_code == 201
    assert "basedOn" not in res.json()


async def test_callback_gets_the_completing_encounter_once(
    client: httpx.AsyncClient, drain: Any, receiver: tuple[CallbackReceiver, str]
) -> None:
    rec, url = receiver
    await register_requester(client, address=f"{url}/fhir")
    patient = await push_patient(client)
    sub_id = (await client.post("/mediator/service-request", json=service_request_body(patient))).json()["id"]
    await drain()

    enc = (await client.post("/mediator/encounter", json=encounter_body(patient, "rep-1"))).json()
    await drain()
    (got,) = rec.wait_for(1)
    assert (got.method, got.path) == ("PUT", f"/fhir/Encounter/{enc['id']}")
    assert orjson.loads(got.body)["id"] == enc["id"]
    assert (await client.get(f"/fhir/Subscription/{sub_id}")).json()["status"] == "off"

    await client.post("/mediator/encounter", json=encounter_body(patient, "rep-2"))
    await drain()
    assert len(rec.requests) == 1
