"""The Deliveries page: tabs with each job's reason, retry of a dead letter, purge of delivered jobs."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import httpx
import pytest

from cht_interop.delivery import outbox
from cht_interop.services import Services
from tests.console.conftest import csrf_of, until_dead
from tests.ltfu.conftest import push_patient, register_requester, service_request_body
from tests.support.cht_double import ChtDouble
from tests.support.live import serve_in_thread
from tests.support.receiver import CallbackReceiver

JOB = re.compile(r'href="/console/deliveries/(\d+)">#')


async def cht_records(services: Services) -> list[outbox.JobRecord]:
    async with services.db.connect() as conn:
        return await outbox.list_jobs(conn, kind="cht.record")


async def follow_up(client: httpx.AsyncClient) -> None:
    await register_requester(client)
    res = await client.post(
        "/mediator/service-request", json=service_request_body(await push_patient(client))
    )
    assert res.status_code == 201, res.text


def flat(page: httpx.Response) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    # a short retry horizon, so that a failing callback is dead-lettered within the test
    return {"ALLOW_PRIVATE_CALLBACKS": True, "DELIVERY_HORIZON_SECONDS": 0.5}


async def test_a_dead_letter_shows_its_reason_and_is_retried_with_a_click(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, drain: Any, services: Services
) -> None:
    """A requesting system's rest-hook Subscription whose receiver answered 500 until the horizon."""
    receiver = CallbackReceiver(fail_first=10_000)
    with serve_in_thread(receiver.app()) as url:
        sub = {
            "resourceType": "Subscription",
            "status": "active",
            "reason": "console test",
            "criteria": "Encounter?identifier=console-test",
            "channel": {"type": "rest-hook", "endpoint": f"{url}/hook", "payload": "application/fhir+json"},
        }
        assert (await client.post("/fhir/Subscription", json=sub)).status_code == 201
        encounter = {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "identifier": [{"value": "console-test"}],
        }
        assert (await client.post("/fhir/Encounter", json=encounter)).status_code == 201
        job = await until_dead(services, drain, "fhir.subscription-notification")

        dead = await admin.get("/console/deliveries", params={"view": "dead"})
        assert dead.status_code == 200
        assert JOB.findall(dead.text) == [str(job.id)]
        assert "gave up after" in flat(dead) and "last error: HTTP 500" in flat(dead)  # the reason

        # a form without the session's token changes nothing
        refused = await admin.post(f"/console/deliveries/{job.id}/retry", data={"csrf": "forged"})
        assert refused.status_code == 403
        assert (await outbox_job(services, job.id)).status == "dead"

        receiver.fail_first = 0  # the requesting system fixed its receiver
        res = await admin.post(f"/console/deliveries/{job.id}/retry", data={"csrf": csrf_of(dead)})
        assert res.status_code == 303
        assert res.headers["location"] == f"/console/deliveries/{job.id}?notice=retried"
        shown = flat(await admin.get(res.headers["location"]))
        assert f"Job {job.id} is waiting again" in shown and f"Job #{job.id} pending" in shown
        failing = await admin.get("/console/deliveries", params={"view": "failing"})  # tried before: failing
        assert JOB.findall(failing.text) == [str(job.id)]
        before = len(receiver.requests)

        await drain()
        done = await outbox_job(services, job.id)
        assert done.status == "done" and done.attempts == job.attempts + 1  # earlier attempts kept
        (delivered,) = receiver.requests[before:]
        assert delivered.method == "PUT" and delivered.path.startswith("/hook/Encounter/")
        detail = flat(await admin.get(f"/console/deliveries/{job.id}"))
        assert re.search(rf" {job.attempts} [-0-9: ]+UTC [-0-9: ]+UTC dead 500 gave up after", detail)
        assert re.search(rf" {job.attempts + 1} [-0-9: ]+UTC [-0-9: ]+UTC success 200 ", detail), detail


async def outbox_job(services: Services, job_id: int) -> outbox.JobRecord:
    async with services.db.connect() as conn:
        found = await outbox.get_job(conn, job_id)
    assert found is not None
    return found


class TestFailing:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        # one failed attempt, and the next one far enough away to look at it
        return {"DELIVERY_INITIAL_BACKOFF_SECONDS": 600, "DELIVERY_HORIZON_SECONDS": 3600}

    async def test_failing_jobs_show_their_last_error_and_next_try(
        self,
        admin: httpx.AsyncClient,
        client: httpx.AsyncClient,
        cht: ChtDouble,
        drain: Any,
        services: Services,
    ) -> None:
        cht.fail_next(1, 503, {"error": "unavailable"})
        await follow_up(client)
        await drain()
        (job,) = await cht_records(services)
        assert job.status == "pending" and job.attempts == 1
        failing = await admin.get("/console/deliveries")  # the default tab
        assert JOB.findall(failing.text) == [str(job.id)]
        assert "next try" in flat(failing) and "503" in flat(failing)
        waiting = await admin.get("/console/deliveries", params={"view": "pending"})
        assert str(job.id) not in JOB.findall(waiting.text)
        assert "Retry" not in failing.text  # only a dead job can be retried


async def test_retrying_a_job_that_is_not_dead_is_refused(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, drain: Any, services: Services
) -> None:
    await follow_up(client)
    await drain()
    (job,) = await cht_records(services)
    page = await admin.get("/console/deliveries", params={"view": "done"})
    res = await admin.post(f"/console/deliveries/{job.id}/retry", data={"csrf": csrf_of(page)})
    assert res.status_code == 409 and "only a dead job can be retried" in res.text
    assert (
        await admin.post("/console/deliveries/999999/retry", data={"csrf": csrf_of(page)})
    ).status_code == 404


async def test_purge_deletes_delivered_jobs(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, drain: Any, services: Services
) -> None:
    await follow_up(client)
    await drain()
    page = await admin.get("/console/deliveries", params={"view": "done"})
    delivered = JOB.findall(page.text)
    assert delivered
    kept = await admin.post(
        "/console/deliveries/purge", data={"csrf": csrf_of(page), "older_than_days": "30"}
    )
    assert "0 delivered job(s) deleted" in flat(await admin.get(kept.headers["location"]))
    res = await admin.post("/console/deliveries/purge", data={"csrf": csrf_of(page), "older_than_days": "0"})
    after = await admin.get(res.headers["location"])
    assert f"{len(delivered)} delivered job(s) deleted" in flat(after)
    assert JOB.findall(after.text) == []
    bad = await admin.post(
        "/console/deliveries/purge", data={"csrf": csrf_of(page), "older_than_days": "soon"}
    )
    assert bad.status_code == 400


async def test_bad_view_and_unknown_job(admin: httpx.AsyncClient) -> None:
    assert (await admin.get("/console/deliveries", params={"view": "lost"})).status_code == 400
    assert (await admin.get("/console/deliveries/424242")).status_code == 404
    assert (await admin.get("/console/deliveries/not-a-number")).status_code == 400
