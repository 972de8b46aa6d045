"""Cancelling a follow-up (PUT revoked, $cancel) and the LTFU list (a Bundle of ServiceRequests)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from cht_interop.services import Services
from tests.ltfu.conftest import (
    fhir_all,
    jobs_of,
    push_patient,
    register_requester,
    service_request_body,
    task_of,
)
from tests.support.cht_double import ChtDouble


async def start(client: httpx.AsyncClient, patient: str) -> tuple[str, str]:
    res = await client.post("/mediator/service-request", json=service_request_body(patient))
    assert res.status_code == 201, res.text
    return res.headers["Location"].rsplit("/", 1)[1], res.json()["id"]


# -- cancel


@pytest.mark.parametrize("how", ["put", "operation"])
async def test_cancel_revokes_cancels_switches_off_and_tells_the_cht(
    client: httpx.AsyncClient, drain: Any, cht: ChtDouble, how: str
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    sr_id, sub_id = await start(client, patient)
    await drain()
    (follow_up,) = cht.records_of_form("INTEROP_FOLLOW_UP")

    if how == "put":
        sr = (await client.get(f"/fhir/ServiceRequest/{sr_id}")).json()
        res = await client.put(f"/mediator/service-request/{sr_id}", json={**sr, "status": "revoked"})
    else:
        params = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "Came back"}]}
        res = await client.post(f"/mediator/service-request/{sr_id}/$cancel", json=params)

    assert res.status_code == 200, res.text
    assert res.json()["status"] == "revoked"
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "cancelled"
    assert task["statusReason"]["text"] == ("Came back" if how == "operation" else "Revoked by the requester")
    assert (await client.get(f"/fhir/Subscription/{sub_id}")).json()["status"] == "off"
    await drain()
    (cancel,) = cht.records_of_form("INTEROP_FOLLOW_UP_CANCEL")
    assert cancel["fields"]["patient_uuid"] == patient
    assert cancel["fields"]["service_request_id"] == follow_up["fields"]["service_request_id"] == sr_id

    again = await client.post(f"/mediator/service-request/{sr_id}/$cancel")
    assert again.status_code == 200
    await drain()
    assert len(cht.records_of_form("INTEROP_FOLLOW_UP_CANCEL")) == 1


async def test_cancel_before_the_cht_got_it_sends_no_follow_up(
    client: httpx.AsyncClient, drain: Any, cht: ChtDouble
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    sr_id, _ = await start(client, patient)
    assert (await client.post(f"/mediator/service-request/{sr_id}/$cancel")).status_code == 200
    await drain()
    assert cht.records_of_form("INTEROP_FOLLOW_UP") == []
    assert len(cht.records_of_form("INTEROP_FOLLOW_UP_CANCEL")) == 1
    assert task_of(await fhir_all(client, "Task"), sr_id)["status"] == "cancelled"


async def test_cancel_errors(client: httpx.AsyncClient) -> None:
    assert (await client.post("/mediator/service-request/999999/$cancel")).status_code == 404
    await register_requester(client)
    patient = await push_patient(client)
    sr_id, _ = await start(client, patient)
    res = await client.put(f"/mediator/service-request/{sr_id}", json={"status": "completed"})
    assert res.status_code == 400
    assert "must be [revoked]" in res.json()["issue"][0]["diagnostics"]
    assert task_of(await fhir_all(client, "Task"), sr_id)["status"] == "requested"


# -- the LTFU list


def bundle(entries: list[dict[str, Any]], kind: str = "batch") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": e} for e in entries]}


@pytest.mark.parametrize("kind", ["batch", "transaction", "collection"])
async def test_list_answers_one_entry_per_patient(
    client: httpx.AsyncClient, drain: Any, cht: ChtDouble, services: Services, kind: str
) -> None:
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(3)]
    unknown = str(uuid.uuid4())
    invalid = {**service_request_body(patients[0]), "intent": None}
    entries = [
        service_request_body(patients[0]),
        service_request_body(patients[1]),
        service_request_body(unknown),
        invalid,
        service_request_body(patients[2]),
        service_request_body(patients[1]),  # same patient and requester again
    ]
    res = await client.post("/mediator/service-request", json=bundle(entries, kind))

    assert res.status_code == 200
    answer = res.json()
    assert answer["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created", "201 Created", "404", "400", "201 Created", "200 OK"]
    assert "Retry later" in answer["entry"][2]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert '"intent" is required' in answer["entry"][3]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert answer["entry"][5]["response"]["location"] == answer["entry"][1]["response"]["location"]
    tasks = await fhir_all(client, "Task")
    assert len(tasks) == 3
    for entry in (answer["entry"][i] for i in (0, 1, 4)):
        sr_id = entry["response"]["location"].split("/")[1]
        assert {"relation": "task", "url": f"Task/{task_of(tasks, sr_id)['id']}"} in entry["link"]
    assert len(await fhir_all(client, "Subscription")) == 3
    assert len(await jobs_of(services, "cht.record", "pending")) == 3
    await drain()
    assert sorted(r["fields"]["patient_uuid"] for r in cht.records_of_form("INTEROP_FOLLOW_UP")) == sorted(
        patients
    )

    # the same list again: every follow-up exists, nothing new
    again = (await client.post("/mediator/service-request", json=bundle(entries, kind))).json()
    assert [e["response"]["status"] for e in again["entry"]] == [
        "200 OK",
        "200 OK",
        "404",
        "400",
        "200 OK",
        "200 OK",
    ]
    assert len(await fhir_all(client, "Task")) == 3


async def test_list_with_an_unknown_requester(client: httpx.AsyncClient) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    entries = [service_request_body(patient, org="nobody"), service_request_body(patient)]
    answer = (await client.post("/mediator/service-request", json=bundle(entries))).json()
    assert [e["response"]["status"] for e in answer["entry"]] == ["404", "201 Created"]


async def test_list_rules(client: httpx.AsyncClient) -> None:
    res = await client.post("/mediator/service-request", json={"resourceType": "Bundle", "type": "searchset"})
    assert res.status_code == 400
    assert "batch, transaction, collection" in res.json()["issue"][0]["diagnostics"]
    empty = await client.post("/mediator/service-request", json={"resourceType": "Bundle", "type": "batch"})
    assert empty.status_code == 200
    assert empty.json()["entry"] == []
