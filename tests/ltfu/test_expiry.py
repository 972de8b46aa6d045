"""Follow-up expiry against a late Encounter, and the follow-up's dead-letter hook run after a crash."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest

from cht_interop.delivery import outbox
from cht_interop.delivery.registry import HandlerRegistry, Job
from cht_interop.delivery.worker import OutboxWorker
from cht_interop.ltfu.validation import validate_encounter
from cht_interop.ltfu.writes import CHT_RECORD_JOB, EXPIRY_JOB, SUBSCRIPTION_OFF_JOB
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

OUTCOME = {
    "url": "urn:cht-interop:ltfu-outcome",
    "valueCodeableConcept": {
        "coding": [{"system": "urn:cht-interop:CodeSystem/ltfu-outcome", "code": "returned_to_care"}]
    },
}
EXPIRES_FAST = {"FOLLOW_UP_EXPIRY_SECONDS": 0.5}


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, object]:
    return getattr(request, "param", {})


async def start(client: httpx.AsyncClient, patient: str) -> tuple[str, str]:
    """A follow-up; (ServiceRequest id, Subscription id)."""
    res = await client.post("/mediator/service-request", json=service_request_body(patient))
    assert res.status_code == 201, res.text
    return res.headers["Location"].rsplit("/", 1)[1], str(res.json()["id"])


async def store_without_completing(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    """The CHT's report stored in the FHIR store without completing its follow-up (as an earlier
    version could leave it, or a direct write to the store): the expiry job's case to repair."""
    (patient,) = await fhir_all(client, "Patient")
    encounter = validate_encounter(body).resource
    encounter["subject"] = {"reference": f"Patient/{patient['id']}"}
    res = await client.post("/fhir/Encounter", json=encounter)
    assert res.status_code == 201, res.text


async def expiry_notes(services: Services) -> list[str | None]:
    notes: list[str | None] = []
    jobs = await jobs_of(services, EXPIRY_JOB)
    async with services.db.transaction() as conn:
        for job in jobs:
            record = await outbox.get_job(conn, job.id)
            assert record is not None
            notes += [a.note for a in record.attempt_log if a.outcome == "success"]
    return notes


@pytest.mark.parametrize("settings_overrides", [EXPIRES_FAST], indirect=True)
@pytest.mark.parametrize("based_on", [True, False], ids=["based-on-the-request", "patient-only"])
async def test_expiry_completes_a_follow_up_whose_encounter_was_stored_without_completing_it(
    client: httpx.AsyncClient, services: Services, drain: Any, drain_held: Any, based_on: bool
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    sr_id, sub_id = await start(client, patient)
    await drain_held()  # the CHT record, not the expiry (its window may pass meanwhile)
    assert task_of(await fhir_all(client, "Task"), sr_id)["status"] == "accepted"
    extra: dict[str, Any] = {"extension": [OUTCOME]}
    if based_on:
        extra["basedOn"] = [{"reference": f"ServiceRequest/{sr_id}"}]
    await store_without_completing(client, encounter_body(patient, "rep-late", **extra))
    (encounter,) = await fhir_all(client, "Encounter")
    assert task_of(await fhir_all(client, "Task"), sr_id)["status"] == "accepted"

    await asyncio.sleep(0.6)
    await drain()

    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "completed", task.get("statusReason")
    assert "statusReason" not in task
    assert {
        "type": {"text": "encounter"},
        "valueReference": {"reference": f"Encounter/{encounter['id']}"},
    } in (task["output"])
    assert task["businessStatus"]["coding"][0]["code"] == "returned_to_care"
    # switched off in the completion's own write: the Encounter's notification, queued with the
    # Encounter before it, is still owed (the Subscription went off after it was queued)
    assert (await client.get(f"/fhir/Subscription/{sub_id}")).json()["status"] == "off"
    assert await jobs_of(services, SUBSCRIPTION_OFF_JOB) == []
    assert await expiry_notes(services) == [
        "0 of 1 follow-up(s) expired; 1 completed with an Encounter stored without completing them"
    ]
    await drain()  # nothing more happens to it
    assert task_of(await fhir_all(client, "Task"), sr_id)["meta"] == task["meta"]


@pytest.mark.parametrize("settings_overrides", [EXPIRES_FAST], indirect=True)
async def test_an_encounter_from_before_the_follow_up_does_not_save_it_from_expiring(
    client: httpx.AsyncClient, drain: Any
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    earlier = await client.post("/mediator/encounter", json=encounter_body(patient, "rep-old"))
    assert earlier.status_code == 201, earlier.text
    sr_id, _sub_id = await start(client, patient)
    await drain()
    await asyncio.sleep(0.6)
    await drain()
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "failed"
    assert task["statusReason"]["text"].startswith("Expired")


@pytest.mark.parametrize("settings_overrides", [EXPIRES_FAST], indirect=True)
async def test_an_encounter_of_another_follow_up_does_not_complete_this_one(
    client: httpx.AsyncClient, drain: Any
) -> None:
    """The patient's earlier follow-up was cancelled; a report based on it, stored later (straight
    through the FHIR API), belongs to that one: the open follow-up still expires."""
    await register_requester(client)
    patient = await push_patient(client)
    cancelled_sr, _ = await start(client, patient)
    cancel = await client.post(f"/mediator/service-request/{cancelled_sr}/$cancel")
    assert cancel.status_code == 200, cancel.text
    sr_id, _sub_id = await start(client, patient)
    await drain()
    (stored_patient,) = await fhir_all(client, "Patient")
    other = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": f"Patient/{stored_patient['id']}"},
        "basedOn": [{"reference": f"ServiceRequest/{cancelled_sr}"}],
    }
    assert (await client.post("/fhir/Encounter", json=other)).status_code == 201
    await asyncio.sleep(0.6)
    await drain()
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "failed"
    assert task["statusReason"]["text"].startswith("Expired")


@pytest.mark.parametrize("settings_overrides", [{"CHT_PASSWORD": "wrong-password"}], indirect=True)
async def test_a_follow_up_whose_hook_was_cut_off_fails_once_on_a_later_worker(
    client: httpx.AsyncClient, services: Services
) -> None:
    """The CHT refuses the follow-up; the process stops before ``on_dead`` failed the Task. A later
    worker fails it (Subscription off), and a second run of the hook changes nothing."""
    await register_requester(client)
    patient = await push_patient(client)
    sr_id, sub_id = await start(client, patient)
    real = services.handlers.get(CHT_RECORD_JOB)
    assert real is not None and real.on_dead is not None

    async def process_stops(job: Job, reason: str) -> None:
        raise RuntimeError("the process stopped")

    crashing = HandlerRegistry()
    crashing.register(CHT_RECORD_JOB, real.handler, on_dead=process_stops)
    assert [o.status for o in await OutboxWorker(services.db, crashing, services.settings).drain()] == [
        "dead"
    ]
    (job,) = await jobs_of(services, CHT_RECORD_JOB)
    assert (job.status, job.dead_hook) == ("dead", "pending")
    assert task_of(await fhir_all(client, "Task"), sr_id)["status"] == "requested"

    later = services.settings.delivery_max_backoff_seconds + 1

    def clock() -> Any:
        return outbox.utcnow() + timedelta(seconds=later)

    assert await OutboxWorker(services.db, services.handlers, services.settings, clock=clock).run_once() == []
    task = task_of(await fhir_all(client, "Task"), sr_id)
    assert task["status"] == "failed" and "401" in task["statusReason"]["text"]
    assert (await client.get(f"/fhir/Subscription/{sub_id}")).json()["status"] == "off"
    (job,) = await jobs_of(services, CHT_RECORD_JOB)
    assert job.dead_hook == "done"

    # run twice (a worker stopping after the hook, before recording it): nothing changes
    await real.on_dead(
        Job(job.id, job.kind, job.target, job.payload, job.ordering_key, job.attempts, job.created_at),
        job.last_error or "",
    )
    assert task_of(await fhir_all(client, "Task"), sr_id)["meta"] == task["meta"]
