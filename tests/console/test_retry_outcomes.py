"""What a retry by hand achieves for the two dead letters a follow-up can leave.

Both are domain behaviour (``ltfu/jobs.py``, ``fhir/subscriptions/delivery.py``), tested here
because the console's Retry button is where an administrator meets them.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cht_interop.delivery import outbox
from cht_interop.services import Services
from tests.console.conftest import until_dead
from tests.ltfu.conftest import encounter_body, push_patient, register_requester, service_request_body
from tests.support.cht_double import ChtDouble
from tests.support.live import serve_in_thread
from tests.support.receiver import CallbackReceiver


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"ALLOW_PRIVATE_CALLBACKS": True, "DELIVERY_HORIZON_SECONDS": 0.5}


async def retry(services: Services, drain: Any, job_id: int) -> outbox.JobRecord:
    async with services.db.transaction() as conn:
        await outbox.retry_dead(conn, job_id)
    await drain()
    async with services.db.connect() as conn:
        found = await outbox.get_job(conn, job_id)
    assert found is not None and found.status == "done"
    return found


async def test_a_retried_callback_of_a_completed_follow_up_reaches_the_requester(
    client: httpx.AsyncClient, drain: Any, services: Services
) -> None:
    receiver = CallbackReceiver(fail_first=10_000)
    with serve_in_thread(receiver.app()) as url:
        await register_requester(client, "org-1", url)
        patient = await push_patient(client)
        res = await client.post("/mediator/service-request", json=service_request_body(patient))
        sr_id = res.headers["Location"].rsplit("/", 1)[1]
        await drain()
        enc = encounter_body(patient, "rep-1", basedOn=[{"reference": f"ServiceRequest/{sr_id}"}])
        assert (await client.post("/mediator/encounter", json=enc)).status_code == 201
        job = await until_dead(services, drain, "fhir.subscription-notification")
        receiver.fail_first = 0
        before = len(receiver.requests)
        await retry(services, drain, job.id)
        assert len(receiver.requests) == before + 1


async def test_a_retried_cht_record_of_a_failed_follow_up_is_not_sent_and_says_why(
    client: httpx.AsyncClient, cht: ChtDouble, drain: Any, services: Services
) -> None:
    """A dead CHT record fails its follow-up (FHIR's ``failed`` is a final Task state, and the
    ServiceRequest is revoked with the reason): a retry by hand does not reopen it. It runs, sends
    nothing and says why; the way forward is the follow-up sent again, which starts a new one."""
    cht.fail_next(1, 400, {"error": "bad_request"})
    await register_requester(client)
    patient = await push_patient(client)
    first = await client.post("/mediator/service-request", json=service_request_body(patient))
    assert first.status_code == 201
    job = await until_dead(services, drain, "cht.record")

    retried = await retry(services, drain, job.id)

    assert cht.records_of_form("INTEROP_FOLLOW_UP") == []
    assert "not sent: the follow-up is failed" in (retried.attempt_log[-1].note or "")
    again = await client.post("/mediator/service-request", json=service_request_body(patient))
    assert again.status_code == 201  # a new follow-up: the failed one is not open
    await drain()
    (record,) = cht.records_of_form("INTEROP_FOLLOW_UP")
    assert record["fields"]["service_request_id"] == again.headers["location"].rsplit("/", 1)[1]
