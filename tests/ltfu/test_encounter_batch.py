"""A CHW's report is one write (Encounter + follow-up completed + its notification), and reports
arriving together share one batch in which each is answered on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from cht_interop.db import Database
from cht_interop.fhir.client import WriteResult
from cht_interop.fhir.errors import FhirError, ResourceNotFound
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
from tests.ltfu.test_encounter import receiver, settings_overrides  # noqa: F401  (private callbacks allowed)
from tests.support.receiver import CallbackReceiver


@contextmanager
def commits(db: Database, *, any_task: bool = False) -> Iterator[list[bool]]:
    """The database write transactions the block's own task commits (the in-process app serves a
    request in its caller's task; the request journal writes from a task of its own), or with
    ``any_task`` every one."""
    seen: list[bool] = []
    mine = asyncio.current_task()

    def ended(_info: dict[Any, Any], committed: bool) -> None:
        if committed and (any_task or asyncio.current_task() is mine):
            seen.append(True)

    db.on_transaction_end(ended)
    try:
        yield seen
    finally:
        db.on_transaction_end(ended, on=False)


async def follow_up(client: httpx.AsyncClient) -> tuple[str, str]:
    """A started follow-up: (patient CHT id, ServiceRequest id)."""
    patient = await push_patient(client)
    res = await client.post("/mediator/service-request", json=service_request_body(patient))
    assert res.status_code == 201, res.text
    return patient, res.headers["Location"].rsplit("/", 1)[1]


def based_on(sr_id: str) -> dict[str, Any]:
    return {"basedOn": [{"reference": f"ServiceRequest/{sr_id}"}]}


async def assert_completed_by(client: httpx.AsyncClient, sr_id: str, encounter_id: str) -> None:
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "completed"
    assert {
        "type": {"text": "encounter"},
        "valueReference": {"reference": f"Encounter/{encounter_id}"},
    } in task["output"]
    assert (await client.get(f"/fhir/ServiceRequest/{sr_id}")).json()["status"] == "completed"


async def test_a_report_its_completion_and_its_callback_are_one_write(
    client: httpx.AsyncClient,
    services: Services,
    drain: Any,
    receiver: tuple[CallbackReceiver, str],  # noqa: F811
) -> None:
    rec, url = receiver
    await register_requester(client, address=f"{url}/fhir")
    patient, sr_id = await follow_up(client)
    await drain()
    with commits(services.db) as seen:
        res = await client.post(
            "/mediator/encounter", json=encounter_body(patient, "rep-1", **based_on(sr_id))
        )
    assert res.status_code == 201, res.text
    # one commit: the callback cannot be sent before the Task and ServiceRequest are completed
    assert len(seen) == 1
    await assert_completed_by(client, sr_id, res.json()["id"])
    (note,) = await jobs_of(services, "fhir.subscription-notification")
    assert note.payload["resource_id"] == res.json()["id"]
    # the Subscription went off in that same commit (no job of its own), and the callback is owed
    sub_id = note.payload["subscription_id"]
    assert (await client.get(f"/fhir/Subscription/{sub_id}")).json()["status"] == "off"
    assert await jobs_of(services, "ltfu.subscription-off") == []
    await drain()
    (got,) = rec.wait_for(1)
    assert got.path == f"/fhir/Encounter/{res.json()['id']}"
    # a later report of the patient calls nobody back
    again = await client.post("/mediator/encounter", json=encounter_body(patient, "rep-2"))
    assert again.status_code == 201, again.text
    await drain()
    assert len(rec.requests) == 1


async def test_reports_taken_together_are_one_write_and_each_answered_on_its_own(
    client: httpx.AsyncClient, services: Services, drain: Any
) -> None:
    await register_requester(client)
    started = [await follow_up(client) for _ in range(3)]
    await drain()
    bodies: list[Any] = [encounter_body(p, f"rep-{n}", **based_on(sr)) for n, (p, sr) in enumerate(started)]
    bodies.insert(1, encounter_body("3f1c7c1e-6c1a-4a55-9b8f-0e3c0b5d1a22", "rep-unknown"))
    bodies.insert(3, encounter_body(started[0][0], "rep-bad", status="wrong_status"))
    with commits(services.db) as seen:
        answers = await services.ltfu.encounters.record_together(bodies)
    assert len(seen) == 1
    good = [answers[0], answers[2], answers[4]]
    assert all(isinstance(a, WriteResult) and a.created for a in good), answers
    assert isinstance(answers[1], ResourceNotFound)
    assert isinstance(answers[3], FhirError) and answers[3].status == 400
    for (_patient, sr_id), answer in zip(started, good, strict=True):
        assert isinstance(answer, WriteResult)
        await assert_completed_by(client, sr_id, answer.resource["id"])
    assert len(await fhir_all(client, "Encounter")) == 3


async def test_a_report_the_store_refuses_does_not_fail_the_others_in_its_batch(
    client: httpx.AsyncClient, services: Services, drain: Any
) -> None:
    await register_requester(client)
    (patient, sr_id), (other, other_sr) = [await follow_up(client) for _ in range(2)]
    await drain()
    # two Encounters already carry the report id "twin": a report with it matches both (412)
    (stored_patient, *_rest) = await fhir_all(client, "Patient", identifier=other)
    twin = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "identifier": [{"system": "cht-report", "value": "twin"}],
        "subject": {"reference": f"Patient/{stored_patient['id']}"},
    }
    for _ in range(2):
        assert (await client.post("/fhir/Encounter", json=twin)).status_code == 201
    answers = await services.ltfu.encounters.record_together(
        [
            encounter_body(patient, "rep-1", **based_on(sr_id)),
            encounter_body(other, "twin", **based_on(other_sr)),
        ]
    )
    good, refused = answers
    assert isinstance(good, WriteResult) and good.created
    await assert_completed_by(client, sr_id, good.resource["id"])
    assert isinstance(refused, FhirError) and refused.status == 412
    # nothing of the refused report is half-written: its follow-up is still open
    assert task_of(await fhir_all(client, "Task"), other_sr)["status"] == "accepted"
    assert len(await fhir_all(client, "Encounter")) == 3


@pytest.mark.parametrize("together", [True, False], ids=["one-batch", "concurrent-posts"])
async def test_identical_reports_at_once_are_one_encounter(
    client: httpx.AsyncClient, services: Services, drain: Any, together: bool
) -> None:
    await register_requester(client)
    patient, sr_id = await follow_up(client)
    await drain()
    body = encounter_body(patient, "rep-1", **based_on(sr_id))
    if together:
        answers = await services.ltfu.encounters.record_together([body, body])
        assert all(isinstance(a, WriteResult) for a in answers), answers
        statuses = [a.status for a in answers if isinstance(a, WriteResult)]
        ids = {a.resource["id"] for a in answers if isinstance(a, WriteResult)}
    else:
        posted = await asyncio.gather(*(client.post("/mediator/encounter", json=body) for _ in range(2)))
        statuses = [r.status_code for r in posted]
        ids = {r.json()["id"] for r in posted}
    assert sorted(statuses) == [200, 201]
    (encounter_id,) = ids
    assert [e["id"] for e in await fhir_all(client, "Encounter")] == [encounter_id]
    await assert_completed_by(client, sr_id, encounter_id)


async def test_a_task_changed_between_look_up_and_write_is_retried(
    client: httpx.AsyncClient, services: Services, drain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register_requester(client)
    patient, sr_id = await follow_up(client)
    await drain()
    writes = services.ltfu.writes
    original = writes.fhir_transaction
    changed: list[str] = []

    async def change_first(entries: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        if not changed:  # another step changes the Task after this report looked it up
            task = task_of(await fhir_all(client, "Task"), sr_id)
            note = {**task, "note": [{"text": "changed meanwhile"}]}
            changed.append((await client.put(f"/fhir/Task/{task['id']}", json=note)).text)
        return await original(entries, **kwargs)

    monkeypatch.setattr(writes, "fhir_transaction", change_first)
    res = await client.post("/mediator/encounter", json=encounter_body(patient, "rep-1", **based_on(sr_id)))
    assert res.status_code == 201, res.text
    await assert_completed_by(client, sr_id, res.json()["id"])
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["note"] == [{"text": "changed meanwhile"}]  # the other step's change is kept
    assert len(await fhir_all(client, "Encounter")) == 1


async def test_subscriptions_switched_off_together_share_a_write(
    client: httpx.AsyncClient, services: Services
) -> None:
    """The worker runs many subscription-off jobs at once: they share one search and one write."""
    await register_requester(client)
    subscriptions = []
    for _ in range(3):
        patient = await push_patient(client)
        res = await client.post("/mediator/service-request", json=service_request_body(patient))
        subscriptions.append(str(res.json()["id"]))
    a, b, already = subscriptions
    switch_off = services.ltfu.lifecycle.switch_subscription_off
    assert await switch_off(already)
    assert services.journal is not None
    await services.journal.flush()  # its writes are not the switch-offs'
    with commits(services.db, any_task=True) as seen:
        switched = await asyncio.gather(*(switch_off(s) for s in (a, b, a, already, "gone")))
    assert switched == [True, True, False, False, False]
    # the first call's batch starts at once; the four that arrive while it runs share the next
    assert len(seen) == 2
    for sub_id in subscriptions:
        assert (await client.get(f"/fhir/Subscription/{sub_id}")).json()["status"] == "off"
