"""Background work in the journal: each job attempt a row, linked to the follow-up it serves and
the transaction that started it; the retention purge."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cht_interop.db import Database, migrate
from cht_interop.delivery.outbox.admin import list_jobs
from cht_interop.delivery.worker import OutboxWorker
from cht_interop.journal import store
from cht_interop.journal.entries import Row
from cht_interop.journal.jobs import PURGE_JOB, ensure_purge_scheduled, keep_purge_scheduled
from cht_interop.services import Services
from tests.journal.conftest import full, journal_rows
from tests.journal.test_requests import OPENHIM, TX_ID
from tests.ltfu.conftest import (
    encounter_body,
    jobs_of,
    post_list_of_new_patients,
    push_patient,
    register_requester,
    service_request_body,
)
from tests.support.cht_double import ChtDouble
from tests.support.receiver import CallbackReceiver


async def test_a_follow_up_s_timeline_from_its_openhim_transaction(
    client: httpx.AsyncClient,
    services: Services,
    cht: ChtDouble,
    drain: Any,
    receiver: tuple[CallbackReceiver, str],
) -> None:
    rec, url = receiver
    await register_requester(client, address=f"{url}/fhir")
    patient = await push_patient(client)
    res = await client.post("/mediator/service-request", json=service_request_body(patient), headers=OPENHIM)
    follow_up_id = res.json()["properties"]["followUpId"]
    await drain()  # the CHT submission
    enc = (await client.post("/mediator/encounter", json=encounter_body(patient, "rep-1"))).json()
    await drain()  # the callback (the Subscription went off in the Encounter's own write)
    rec.wait_for(1)
    await journal_rows(services)

    async with services.db.connect() as conn:
        line = await store.timeline(conn, follow_up_id)
        listed = await store.list_entries(conn, store.Filters(follow_up_id=follow_up_id))
        from_openhim = await store.timeline_of_transaction(conn, TX_ID)
        unknown = await store.timeline_of_transaction(conn, "no-such-transaction")
    assert from_openhim == line and unknown is None
    assert line.origin_transaction_id == TX_ID
    steps = [(e.kind, e.path) for e in line.entries]
    assert steps == [
        ("request", "/mediator/service-request"),
        ("job", "cht.record"),
        ("request", "/mediator/encounter"),
        ("job", "fhir.subscription-notification"),
    ]
    assert {e.id for e in listed.entries} == {e.id for e in line.entries}
    submission, callback = line.entries[1], line.entries[3]
    assert line.entries[2].properties == {"followUpId": follow_up_id}  # the Encounter completing it
    for job in (submission, callback):
        assert job.origin_transaction_id == TX_ID
        assert job.transaction_id != TX_ID and job.outcome == "done" and job.attempt == 1
    assert submission.follow_up_id == follow_up_id
    assert submission.status == 200
    assert submission.job_id == (await jobs_of(services, "cht.record"))[0].id
    cht_url = httpx.URL(services.settings.cht_url or "")
    (call,) = [o for o in submission.orchestrations if o["request"]["host"] == cht_url.host]
    # the record's part of the _bulk_docs call it went in (the other records' parts are theirs)
    assert call["name"] == f"POST {cht_url.host}/medic/_bulk_docs"
    assert call["request"]["host"] == cht_url.host and call["request"]["port"] == str(cht_url.port)
    assert (call["request"]["method"], call["request"]["path"], call["request"]["querystring"]) == (
        "POST",
        "/medic/_bulk_docs",
        "",
    )
    (sent,) = orjson.loads(call["request"]["body"])["docs"]
    assert sent["_id"] == f"interop-follow-up-{follow_up_id}"  # the record's own id: a resend conflicts
    assert (sent["fields"]["patient_uuid"], sent["form"]) == (patient, "INTEROP_FOLLOW_UP")
    assert "authorization" not in {k.lower() for k in call["request"]["headers"]}
    assert call["response"]["status"] == 201
    (answer,) = orjson.loads(call["response"]["body"])
    assert answer["ok"] is True and answer["id"] == sent["_id"]
    assert call["request"]["timestamp"] <= call["response"]["timestamp"]
    (delivered,) = [o for o in callback.orchestrations if o["request"]["host"] != "embedded FHIR store"]
    assert (delivered["request"]["method"], delivered["request"]["path"]) == (
        "PUT",
        f"/fhir/Encounter/{enc['id']}",
    )
    assert delivered["response"]["status"] == 200
    assert callback.target == f"{url}/fhir"


class _NotFhir(CallbackReceiver):
    """A receiver answering ``200 {}``: HAPI's rules count that as a failed delivery."""

    async def _handle(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        await super()._handle(request)
        return JSONResponse({})


@pytest.fixture
def not_fhir_receiver() -> Any:
    from tests.support.live import serve_in_thread

    r = _NotFhir()
    with serve_in_thread(r.app()) as url:
        yield r, url


async def test_a_cht_submission_s_row_shows_its_own_follow_up_not_the_others_sent_with_it(
    client: httpx.AsyncClient, services: Services, cht: ChtDouble, drain: Any
) -> None:
    """Submissions running together share one Task look-up and one acceptance: those are no one
    submission's own, so no row carries the other follow-ups' Tasks (their patients' data)."""
    await post_list_of_new_patients(client, 8)
    await drain()  # the list's write, then its 8 CHT submissions, together

    rows = [r for r in await journal_rows(services) if r.path == "cht.record"]
    follow_ups = {r.follow_up_id for r in rows}
    assert len(rows) == len(follow_ups) == 8 and {r.outcome for r in rows} == {"done"}
    for row in rows:
        shown = orjson.dumps((await full(services, row)).orchestrations).decode()
        assert row.follow_up_id in shown  # its own record's part of the _bulk_docs call
        assert [f for f in follow_ups if f != row.follow_up_id and f in shown] == []


async def test_a_failing_callback_says_why(
    client: httpx.AsyncClient,
    services: Services,
    cht: ChtDouble,
    drain: Any,
    not_fhir_receiver: tuple[CallbackReceiver, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec, url = not_fhir_receiver
    await register_requester(client, address=f"{url}/fhir")
    patient = await push_patient(client)
    await client.post("/mediator/service-request", json=service_request_body(patient))
    await drain()
    await client.post("/mediator/encounter", json=encounter_body(patient, "rep-1"))
    with caplog.at_level(logging.INFO, logger="cht_interop"):
        worker = OutboxWorker(services.db, services.handlers, services.settings)
        await worker.run_once()
    rec.wait_for(1)
    why = [r.getMessage() for r in caplog.records if "fhir.subscription-notification" in r.getMessage()]
    assert len(why) == 1, why
    assert (
        f"to {url}/fhir failed: HTTP 200 with a application/json body that is not a FHIR resource" in why[0]
    )
    assert "retry in " in why[0] and why[0].endswith("attempt 1")
    (row,) = await journal_rows(services, store.Filters(path="fhir.subscription-notification"))
    assert (row.outcome, row.attempt) == ("failed", 1)
    assert "not a FHIR resource" in (row.error or "")
    (started,) = await journal_rows(services, store.Filters(path="/mediator/service-request"))
    async with services.db.connect() as conn:  # found from the follow-up (through its Subscription)
        line = await store.timeline(conn, started.follow_up_id or "")
    assert row.id in {e.id for e in line.entries}


async def test_retention_purge_deletes_old_rows_and_comes_back(
    client: httpx.AsyncClient, services: Services, drain: Any
) -> None:
    now = datetime.now(UTC)
    retention = timedelta(seconds=services.settings.journal_retention_seconds)

    def row(entry_id: str, age: timedelta) -> Row:
        values = {c: None for c in ("client", "method", "query", "status", "error", "request_body")}
        values.update(response_body=None, follow_up_id=entry_id, job_id=None, attempt=None, target=None)
        values.update(id=entry_id, transaction_id=entry_id, kind="request", started_at=now - age)
        values.update(
            duration_ms=1.0, path="/fhir/Patient", outcome="Successful", properties={}, orchestrations=[]
        )
        return Row(values, [f"follow-up:{entry_id}"])

    async with services.db.transaction() as conn:
        await store.insert_rows(
            conn,
            [
                row("old-1", retention + timedelta(hours=1)),
                row("old-2", retention * 2),
                row("new", timedelta()),
            ],
        )
    assert await ensure_purge_scheduled(services.db)
    assert not await ensure_purge_scheduled(services.db)  # one chain, however many workers start

    outcomes = await drain()

    assert [o.status for o in outcomes] == ["done"]
    async with services.db.connect() as conn:
        left = await store.list_entries(conn, store.Filters(path="/fhir/Patient"))
        old = await store.timeline(conn, "old-1")
    assert [e.id for e in left.entries] == ["new"]
    assert old.entries == []
    (next_run,) = await jobs_of(services, PURGE_JOB, "pending")
    assert next_run.next_attempt_at > now + timedelta(minutes=59)


async def test_a_worker_starting_while_the_database_is_not_ready_schedules_the_purge_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's start must not die for a database that cannot answer yet (PostgreSQL
    restarting; here a SQLite file not migrated yet): the purge chain is scheduled once it can."""
    url = f"sqlite:///{tmp_path / 'late.sqlite3'}"
    db = Database(url)
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="cht_interop.journal.jobs")
    try:
        keeping = asyncio.create_task(keep_purge_scheduled(db, stop))
        for _ in range(100):
            if "journal purge not scheduled yet" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert not keeping.done()  # refused, and still trying
        await asyncio.to_thread(migrate, url)
        await asyncio.wait_for(keeping, timeout=30)
        async with db.connect() as conn:
            assert len(await list_jobs(conn, status="pending", kind=PURGE_JOB)) == 1
    finally:
        stop.set()
        await db.dispose()
