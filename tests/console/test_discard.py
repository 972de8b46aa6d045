"""Discarding a delivery job: the outbox's write (one transaction, on SQLite and PostgreSQL) and the
console's Discard button."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

import httpx
import pytest

from cht_interop.db import Database
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import NewJob
from cht_interop.delivery.outbox.admin import JobNotDiscardable, discard
from cht_interop.services import Services
from tests.console.conftest import csrf_of
from tests.ltfu.conftest import fhir_all, push_patient, register_requester, service_request_body
from tests.support.cht_double import ChtDouble

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"DELIVERY_INITIAL_BACKOFF_SECONDS": 60}  # a failed attempt waits: nothing retries mid-test


KIND = "test.kind"


def flat(page: httpx.Response) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


async def failing_and_dead(db: Database) -> tuple[int, int]:
    """Two jobs of one ordering key tried once: the first failing (pending again), the second dead."""
    async with db.transaction() as conn:
        first, second = await outbox.enqueue(
            conn,
            [NewJob(kind=KIND, target=f"peer-{i}", payload={}, ordering_key=None) for i in range(2)],
            now=T0,
        )
        claimed = await outbox.claim(conn, kinds=[KIND], worker_id="w", lease_seconds=30, limit=2, now=T0)
        by_id = {j.id: j for j in claimed}
        await outbox.reschedule(
            conn,
            by_id[first],
            worker_id="w",
            next_attempt_at=T0 + timedelta(seconds=5),
            error="HTTP 503",
            now=T0,
        )
        await outbox.dead_letter(conn, by_id[second], worker_id="w", reason="HTTP 404 from peer", now=T0)
    return first, second


async def test_a_failing_or_dead_job_is_discarded_for_good_with_its_reason(db: Database) -> None:
    failing, dead = await failing_and_dead(db)
    later = T0 + timedelta(minutes=1)
    async with db.transaction() as conn:
        one = await discard(conn, failing, reason="  closed by  phone ", by="admin", now=later)
        two = await discard(conn, dead, reason="wrong endpoint", by="ops")
    assert (one.status, one.last_error, one.updated_at) == (
        "discarded",
        "discarded by admin: closed by phone",
        later,
    )
    assert (two.status, two.last_error) == ("discarded", "discarded by ops: wrong endpoint")
    assert [a.error for a in one.attempt_log] == ["HTTP 503"]  # the attempts keep what happened before
    async with db.transaction() as conn:
        taken = await outbox.claim(
            conn, kinds=[KIND], worker_id="w", lease_seconds=30, now=T0 + timedelta(days=9)
        )
        counts = await outbox.count_by_status(conn)
    assert taken == []  # the worker never takes it again
    assert counts["discarded"] == 2 and counts["pending"] == counts["dead"] == 0
    async with db.transaction() as conn:
        with pytest.raises(outbox.JobNotRetryable):
            await outbox.retry_dead(conn, dead)
        with pytest.raises(JobNotDiscardable, match="only a dead or failing job"):
            await discard(conn, dead, reason="again", by="admin")


async def test_what_cannot_be_discarded_is_refused_and_left_as_it_was(db: Database) -> None:
    async with db.transaction() as conn:
        running, waiting = await outbox.enqueue(
            conn, [NewJob(kind=KIND, target=f"p{i}", payload={}) for i in range(2)], now=T0
        )
    async with db.transaction() as conn:
        [job] = await outbox.claim(conn, kinds=[KIND], worker_id="w", lease_seconds=30, limit=1, now=T0)
    assert job.id == running  # oldest first: the first runs, the second waits
    for job_id, says in ((running, "attempt is under way"), (waiting, "never tried")):
        async with db.transaction() as conn:
            with pytest.raises(JobNotDiscardable, match=says):
                await discard(conn, job_id, reason="no", by="admin")
    async with db.transaction() as conn:
        with pytest.raises(outbox.JobNotFound):
            await discard(conn, 999_999, reason="no", by="admin")
        with pytest.raises(ValueError, match="needs a reason"):
            await discard(conn, running, reason="   ", by="admin")
        counts = await outbox.count_by_status(conn)
    assert counts == {"pending": 1, "running": 1, "done": 0, "dead": 0, "discarded": 0}


async def test_the_discard_button_needs_a_reason_and_the_token(
    admin: httpx.AsyncClient, services: Services
) -> None:
    failing, dead = await failing_and_dead(services.db)
    page = await admin.get(f"/console/deliveries/{dead}")
    assert "Discard" in flat(page)
    csrf = csrf_of(page)
    assert (await admin.post(f"/console/deliveries/{dead}/discard", data={"reason": "x"})).status_code == 403
    no_reason = await admin.post(f"/console/deliveries/{dead}/discard", data={"csrf": csrf, "reason": " "})
    assert no_reason.status_code == 400 and "Say why" in flat(no_reason)
    async with services.db.connect() as conn:
        assert (await outbox.get_job(conn, dead)).status == "dead"  # type: ignore[union-attr]

    res = await admin.post(
        f"/console/deliveries/{dead}/discard", data={"csrf": csrf, "reason": "the clinic closed"}
    )
    assert res.status_code == 303
    shown = flat(await admin.get(res.headers["location"]))
    assert "is discarded: the worker will not try it again" in shown
    assert "Discarded: discarded by admin: the clinic closed" in shown
    tab = flat(await admin.get("/console/deliveries", params={"view": "discarded"}))
    assert f"#{dead}" in tab and "the clinic closed" in tab and f"#{failing}" not in tab
    again = await admin.post(f"/console/deliveries/{dead}/discard", data={"csrf": csrf, "reason": "twice"})
    assert again.status_code == 409 and "only a dead or failing job" in flat(again)
    failing_page = await admin.post(
        f"/console/deliveries/{failing}/discard", data={"csrf": csrf, "reason": "duplicate request"}
    )
    assert failing_page.status_code == 303


async def test_a_discarded_cht_record_shows_on_its_follow_ups_page(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, services: Services, cht: ChtDouble, drain: Any
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    cht.fail_next(1, 503, {"error": "restarting"})
    res = await client.post("/mediator/service-request", json=service_request_body(patient))
    assert res.status_code == 201, res.text
    await drain()  # one attempt: 503, retried a minute later
    (task,) = await fhir_all(client, "Task")
    task_id = task["id"]
    page = await admin.get(f"/console/follow-ups/{task_id}")
    job_id = int(re.findall(r'href="/console/deliveries/(\d+)"', page.text)[0])
    done = await admin.post(
        f"/console/deliveries/{job_id}/discard",
        data={"csrf": csrf_of(page), "reason": "sent to the CHT by hand"},
    )
    assert done.status_code == 303
    after = flat(await admin.get(f"/console/follow-ups/{task_id}"))
    assert f": discarded job #{job_id} discarded by admin: sent to the CHT by hand" in after
    async with services.db.connect() as conn:
        record = await outbox.get_job(conn, job_id)
    assert record is not None and record.status == "discarded" and len(record.attempt_log) == 1
