"""Long LTFU lists: checked and committed at once (202), follow-ups written in the background."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.delivery.tables import outbox_jobs
from cht_interop.delivery.worker import OutboxWorker
from cht_interop.ltfu import lists as L
from cht_interop.ltfu import staged_lists
from cht_interop.ltfu.resources import FOLLOW_UP_SYSTEM
from cht_interop.ltfu.staged_lists import WRITES_AT_ONCE
from cht_interop.ltfu.writes import LIST_PURGE_JOB, LIST_WRITE_JOB
from cht_interop.services import Services
from tests.ltfu.conftest import (
    fhir_all,
    jobs_of,
    push_patient,
    register_requester,
    service_request_body,
)
from tests.support.cht_double import ChtDouble

FOLLOW_UP_TASK = f"Task?identifier={FOLLOW_UP_SYSTEM}|"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # lists of more than 3 entries are staged; the background writes go 2 follow-ups per job
    return {"LTFU_LIST_SYNC_MAX": 3, "LTFU_LIST_CHUNK": 2}


def bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": e} for e in entries]}


async def stage_four(client: httpx.AsyncClient) -> tuple[list[str], httpx.Response]:
    """A requester, four patients, and a list of their four follow-ups (staged: 202)."""
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(4)]
    res = await client.post(
        "/mediator/service-request", json=bundle([service_request_body(p) for p in patients])
    )
    assert res.status_code == 202
    return patients, res


async def stage_whole(conn: AsyncConnection, rows: L.Staging) -> None:
    """A whole list staged and closed in the caller's transaction (the service stages it in turns)."""
    await L.open_list(conn, rows.list_id, len(rows.entry_rows), None)
    await L.stage_rows(conn, rows)
    await L.close_staging(conn, rows.list_id)


def diagnostics(entry: dict[str, Any]) -> str:
    return str(entry["response"]["outcome"]["issue"][0]["diagnostics"])


def status_path(res: httpx.Response) -> str:
    url = res.headers["Content-Location"]
    assert url.startswith("http://test/mediator/ltfu-lists/")
    return url.removeprefix("http://test")


async def test_long_list_is_checked_now_and_written_in_the_background(
    client: httpx.AsyncClient, drain: Any, cht: ChtDouble, services: Services
) -> None:
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(4)]
    existing = await client.post("/mediator/service-request", json=service_request_body(patients[3]))
    assert existing.status_code == 201
    entries = [
        service_request_body(patients[0]),
        service_request_body(patients[1]),
        service_request_body(str(uuid.uuid4())),  # unknown patient
        {**service_request_body(patients[2]), "intent": None},  # invalid
        service_request_body(patients[2]),
        service_request_body(patients[1]),  # same patient + requester earlier in the list
        service_request_body(patients[3]),  # an open follow-up exists
    ]
    res = await client.post("/mediator/service-request", json=bundle(entries))

    assert res.status_code == 202, res.text
    answer = res.json()
    assert answer["type"] == "batch-response"
    assert answer["link"] == [{"relation": "status", "url": res.headers["Content-Location"]}]
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["202 Accepted", "202 Accepted", "404", "400", "202 Accepted", "200 OK", "200 OK"]
    assert "Retry later" in diagnostics(answer["entry"][2])
    assert '"intent" is required' in diagnostics(answer["entry"][3])
    task_links = [next(lk["url"] for lk in answer["entry"][i]["link"]) for i in (0, 1, 4, 5)]
    assert all(url.startswith(FOLLOW_UP_TASK) for url in task_links)
    assert task_links[1] == task_links[3]  # the in-list duplicate points at the same follow-up
    assert answer["entry"][6]["link"][0]["url"].startswith("Task/")  # the one written before

    # accepted and committed, nothing written to the FHIR store yet
    assert len(await fhir_all(client, "ServiceRequest")) == 1
    assert len(await jobs_of(services, LIST_WRITE_JOB, "pending")) == 2  # 3 follow-ups, 2 per job
    progress = await client.get(status_path(res))
    assert progress.status_code == 202
    assert progress.headers["X-Progress"] == "0 of 3 follow-ups done"
    assert progress.json()["resourceType"] == "OperationOutcome"
    assert "0 of 3 follow-ups done" in progress.json()["issue"][0]["diagnostics"]

    await drain()

    done = await client.get(status_path(res))
    assert done.status_code == 200
    assert done.headers["X-Progress"] == "3 of 3 follow-ups done"
    final = done.json()["entry"]
    assert [e["response"]["status"] for e in final] == [
        "201 Created",
        "201 Created",
        "404",
        "400",
        "201 Created",
        "200 OK",
        "200 OK",
    ]
    tasks = await fhir_all(client, "Task")
    assert len(tasks) == 4
    for i, search in zip((0, 1, 4), task_links, strict=False):
        follow_up = search.removeprefix(FOLLOW_UP_TASK)
        (task,) = [t for t in tasks if {"system": FOLLOW_UP_SYSTEM, "value": follow_up} in t["identifier"]]
        assert {"relation": "task", "url": f"Task/{task['id']}"} in final[i]["link"]
        assert task["basedOn"] == [{"reference": final[i]["response"]["location"]}]
        found = await client.get(f"/fhir/{search}")
        assert [e["resource"]["id"] for e in found.json()["entry"]] == [task["id"]]
    assert sorted(r["fields"]["patient_uuid"] for r in cht.records_of_form("INTEROP_FOLLOW_UP")) == sorted(
        patients
    )


async def test_prefer_respond_async_stages_a_short_list(client: httpx.AsyncClient, drain: Any) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    res = await client.post(
        "/mediator/service-request",
        json=bundle([service_request_body(patient)]),
        headers={"Prefer": "respond-async"},
    )
    assert res.status_code == 202
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["202 Accepted"]
    await drain()
    done = await client.get(status_path(res))
    assert done.status_code == 200
    assert [e["response"]["status"] for e in done.json()["entry"]] == ["201 Created"]


async def test_a_long_list_with_nothing_to_write_is_answered_in_full(
    client: httpx.AsyncClient, services: Services
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    assert (
        await client.post("/mediator/service-request", json=service_request_body(patient))
    ).status_code == 201
    entries = [service_request_body(patient)] * 3 + [{**service_request_body(patient), "status": None}]
    res = await client.post("/mediator/service-request", json=bundle(entries))
    assert res.status_code == 200
    assert "Content-Location" not in res.headers
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["200 OK"] * 3 + ["400"]
    assert await jobs_of(services, LIST_WRITE_JOB) == []


async def test_short_list_is_still_written_before_the_answer(client: httpx.AsyncClient) -> None:
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(3)]
    res = await client.post(
        "/mediator/service-request", json=bundle([service_request_body(p) for p in patients])
    )
    assert res.status_code == 200
    assert "Content-Location" not in res.headers
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["201 Created"] * 3


async def test_a_request_for_a_staged_follow_up_returns_it(
    client: httpx.AsyncClient, drain: Any, cht: ChtDouble
) -> None:
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(4)]
    staged = await client.post(
        "/mediator/service-request",
        json=bundle([service_request_body(p, identifier=[{"system": "emr", "value": p}]) for p in patients]),
    )
    assert staged.status_code == 202

    # same patient + requester while the list is still being written
    single = await client.post("/mediator/service-request", json=service_request_body(patients[0]))
    assert single.status_code == 202, single.text
    assert single.json()["criteria"] == f"Encounter?identifier={patients[0]}"
    assert single.headers["Content-Location"] == staged.headers["Content-Location"]
    assert f"Task?identifier={FOLLOW_UP_SYSTEM}|" in single.headers["Link"]
    # same ServiceRequest identifier (another requester would not matter: the identifier does)
    by_identifier = await client.post(
        "/mediator/service-request",
        json=service_request_body(patients[1], identifier=[{"system": "emr", "value": patients[1]}]),
    )
    assert by_identifier.status_code == 202
    # the same list again: every entry is being written already
    again = await client.post(
        "/mediator/service-request",
        json=bundle([service_request_body(p) for p in patients]),
    )
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["202 Accepted"] * 4
    assert all("being written from LTFU list" in diagnostics(e) for e in again.json()["entry"])

    await drain()
    assert len(await fhir_all(client, "Task")) == 4
    assert len(cht.records_of_form("INTEROP_FOLLOW_UP")) == 4
    after = await client.post("/mediator/service-request", json=service_request_body(patients[0]))
    assert after.status_code == 200  # now the written follow-up answers
    assert after.json()["resourceType"] == "Subscription" and after.json()["id"]


def crash_after_the_first_write(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The first list-write job to finish fails after its follow-ups were committed (as a crash
    there would); the returned list holds True once it has."""
    real_finish = L.finish
    crashed: list[bool] = []

    async def crash_once(*args: Any, **kwargs: Any) -> bool:
        if not crashed:
            crashed.append(True)
            raise ConnectionError("the database went away after the follow-ups were committed")
        return await real_finish(*args, **kwargs)

    monkeypatch.setattr(L, "finish", crash_once)
    return crashed


async def retry_until_written(services: Services, drain: Any) -> None:
    """Run the pending list-write jobs again (at once, not after their backoff) until none is left."""
    while [j for j in await jobs_of(services, LIST_WRITE_JOB) if j.status == "pending"]:
        async with services.db.transaction() as conn:
            await conn.execute(update(outbox_jobs).values(next_attempt_at=datetime.now(UTC)))
        await drain()


async def test_a_list_write_run_again_after_a_crash_writes_nothing_twice(
    client: httpx.AsyncClient, services: Services, drain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patients, res = await stage_four(client)

    crashed = crash_after_the_first_write(monkeypatch)
    await drain()  # the first chunk's job fails after writing; the outbox keeps it for a retry
    assert crashed
    # the failed job is retried (at once, or after its backoff)
    await retry_until_written(services, drain)
    jobs = await jobs_of(services, LIST_WRITE_JOB)
    assert sorted(j.attempts for j in jobs) == [1, 2] and {j.status for j in jobs} == {"done"}

    tasks = await fhir_all(client, "Task")
    assert len(tasks) == 4
    assert len(await fhir_all(client, "ServiceRequest")) == 4
    done = await client.get(status_path(res))
    assert done.status_code == 200
    assert [e["response"]["status"] for e in done.json()["entry"]] == ["201 Created"] * 4
    locations = {e["response"]["location"] for e in done.json()["entry"]}
    assert locations == {t["basedOn"][0]["reference"] for t in tasks}


async def test_only_a_list_write_run_again_looks_for_the_tasks_it_may_have_written(
    client: httpx.AsyncClient, services: Services, drain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first attempt cannot find a Task of its follow-ups (only this job writes them): it does not
    search; a run after a failed (or crashed) attempt does, as the test above shows it must."""
    await stage_four(client)
    searched: list[int] = []
    real_find = staged_lists.find_tasks

    async def find(fhir: Any, follow_up_ids: list[str]) -> Any:
        searched.append(len(follow_up_ids))
        return await real_find(fhir, follow_up_ids)

    monkeypatch.setattr(staged_lists, "find_tasks", find)
    crashed = crash_after_the_first_write(monkeypatch)
    await drain()  # two first attempts, one of them failing after its write
    assert crashed
    await retry_until_written(services, drain)
    assert searched == [2]  # only the failed chunk's second attempt searched
    assert len(await fhir_all(client, "Task")) == 4


async def test_a_list_write_that_gives_up_frees_its_patients(
    client: httpx.AsyncClient, services: Services, drain: Any
) -> None:
    patients, res = await stage_four(client)
    jobs = await jobs_of(services, LIST_WRITE_JOB, "pending")
    registration = services.handlers.get(LIST_WRITE_JOB)
    assert registration is not None and registration.on_dead is not None
    from cht_interop.delivery.registry import Job

    first = min(jobs, key=lambda j: j.id)
    await registration.on_dead(
        Job(first.id, first.kind, first.target, first.payload, None, 5, first.created_at), "kept failing"
    )

    assert (await client.get(status_path(res))).headers["X-Progress"] == "2 of 4 follow-ups done"
    # the patients of the abandoned entries can be asked for again
    again = await client.post("/mediator/service-request", json=service_request_body(patients[0]))
    assert again.status_code == 201

    await drain()
    done = await client.get(status_path(res))
    assert done.status_code == 200
    final = done.json()["entry"]
    assert [e["response"]["status"] for e in final] == ["500", "500", "201 Created", "201 Created"]
    assert "could not be written: kept failing" in diagnostics(final[0])


async def test_list_status_errors(client: httpx.AsyncClient) -> None:
    missing = await client.get(f"/mediator/ltfu-lists/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    anonymous = await client.get(
        f"/mediator/ltfu-lists/{uuid.uuid4()}", auth=None, headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401


@pytest.mark.parametrize("size", [3, 4])  # written before the answer / staged
async def test_an_entry_bad_for_r4_answers_400_alone(
    client: httpx.AsyncClient, drain: Any, size: int
) -> None:
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(size)]
    entries = [service_request_body(p) for p in patients]
    entries[1]["authoredOn"] = "last tuesday"  # passes the reference's rules, not R4's dateTime
    res = await client.post("/mediator/service-request", json=bundle(entries))
    if size == 4:
        assert res.status_code == 202
        # checked when the list is staged: the bad entry's 400 is in the first answer already
        staged = [e["response"]["status"] for e in res.json()["entry"]]
        assert staged == ["202 Accepted", "400"] + ["202 Accepted"] * (size - 2)
        await drain()
        res = await client.get(status_path(res))
    answers = res.json()["entry"]
    assert [e["response"]["status"] for e in answers] == ["201 Created", "400"] + ["201 Created"] * (size - 2)
    assert "authoredOn" in str(answers[1]["response"]["outcome"])
    assert len(await fhir_all(client, "Task")) == size - 1


async def test_a_staged_key_is_unique_in_the_database(services: Services) -> None:
    """Two lists cannot stage the same follow-up key: the second write fails whole (the service
    then checks again and finds the first)."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import IntegrityError

    from cht_interop.ltfu.tables import ltfu_list

    key = L.open_key("patient-1", "org-1")
    entry = L.EntryRow(0, follow_up_id="fu-1", request={"service_request": {}})
    async with services.db.transaction() as conn:
        await stage_whole(conn, L.staging("list-1", [entry], [(key, "fu-1")]))
    with pytest.raises(IntegrityError):
        async with services.db.transaction() as conn:
            rows = L.staging("list-2", [L.EntryRow(0, follow_up_id="fu-2", request={})], [(key, "fu-2")])
            await stage_whole(conn, rows)
    async with services.db.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(ltfu_list)) == 1
        assert (await L.find_staged(conn, [key]))[key] == L.StagedFollowUp("fu-1", "list-1")


async def _list_rows(services: Services, list_id: str) -> tuple[int, int]:
    from sqlalchemy import func, select

    from cht_interop.ltfu.tables import ltfu_list, ltfu_list_entry

    async with services.db.connect() as conn:
        lists = await conn.scalar(
            select(func.count()).select_from(ltfu_list).where(ltfu_list.c.id == list_id)
        )
        entries = await conn.scalar(
            select(func.count()).select_from(ltfu_list_entry).where(ltfu_list_entry.c.list_id == list_id)
        )
    return int(lists or 0), int(entries or 0)


async def test_a_finished_list_status_is_kept_for_the_retention_then_deleted(
    client: httpx.AsyncClient, drain: Any, cht: ChtDouble, services: Services
) -> None:
    """The status says until when it is kept (``Expires``); after that the worker deletes the
    list's rows and the status URL answers 404 saying why, while the follow-ups stay."""
    _patients, res = await stage_four(client)
    list_id = res.headers["Content-Location"].rsplit("/", 1)[1]
    assert await jobs_of(services, LIST_PURGE_JOB) == []  # not finished: nothing to purge yet

    await drain()

    done = await client.get(status_path(res))
    assert done.status_code == 200
    expires = parsedate_to_datetime(done.headers["Expires"])
    retention = timedelta(seconds=services.settings.ltfu_list_retention_seconds)
    assert retention == timedelta(days=7)
    assert abs(expires - (datetime.now(UTC) + retention)) < timedelta(minutes=1)
    (purge,) = await jobs_of(services, LIST_PURGE_JOB)
    assert purge.status == "pending" and purge.payload == {"list_id": list_id}
    assert abs(purge.next_attempt_at - expires) < timedelta(seconds=2)
    await drain()  # not due: the status is still there
    assert (await client.get(status_path(res))).status_code == 200

    async with services.db.transaction() as conn:
        await conn.execute(
            update(outbox_jobs).where(outbox_jobs.c.id == purge.id).values(next_attempt_at=datetime.now(UTC))
        )
    await drain()

    gone = await client.get(status_path(res))
    assert gone.status_code == 404
    assert gone.json()["resourceType"] == "OperationOutcome"
    assert "kept for 7 days after its last follow-up" in gone.json()["issue"][0]["diagnostics"]
    assert await _list_rows(services, list_id) == (0, 0)
    assert len(await fhir_all(client, "Task")) == 4  # the follow-ups are not the list's to delete
    ((job),) = await jobs_of(services, LIST_PURGE_JOB)
    assert job.status == "done"


@pytest.mark.postgres
async def test_two_chunks_finishing_at_once_complete_the_list(pg_url: str) -> None:
    """The worker runs a list's chunks concurrently: when the last two finish together, one of
    them must see the list complete (else it never gets ``Expires`` nor a purge). The second
    waits for the first's commit instead of counting its entries as still staged."""
    from sqlalchemy import select, text

    from cht_interop.db import Database
    from cht_interop.ltfu.tables import ltfu_list
    from tests.conftest import truncate_pg

    truncate_pg(pg_url)
    first_db, second_db = Database(pg_url), Database(pg_url)
    entries = [L.EntryRow(n, follow_up_id=f"fu-{n}", request={"service_request": {}}) for n in range(4)]
    answer = {"response": {"status": "201 Created"}}
    second: asyncio.Task[bool] | None = None
    probe: asyncio.Task[None] | None = None

    async def finish_last_two() -> bool:
        async with second_db.transaction() as conn:
            return await L.finish(conn, "list-1", [(2, answer), (3, answer)])

    async def second_is_waiting() -> None:
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        while True:
            async with first_db.connect() as probe:
                if await probe.scalar(waiting):
                    return
            await asyncio.sleep(0.01)

    try:
        async with first_db.transaction() as conn:
            await stage_whole(conn, L.staging("list-1", entries, []))
        async with first_db.transaction() as conn:
            assert await L.finish(conn, "list-1", [(0, answer), (1, answer)]) is False
            second = asyncio.create_task(finish_last_two())
            probe = asyncio.create_task(second_is_waiting())
            await asyncio.wait({second, probe}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            assert not second.done(), "the second chunk finished while the first was uncommitted"
            assert probe.done()
        assert await asyncio.wait_for(second, 30) is True
        async with first_db.connect() as conn:
            assert await conn.scalar(select(ltfu_list.c.done_at).where(ltfu_list.c.id == "list-1"))
    finally:
        for task in (second, probe):
            if task is not None:
                task.cancel()
        await first_db.dispose()
        await second_db.dispose()


async def test_a_list_answered_entirely_at_once_keeps_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    """A long list with nothing to write in the background is answered in full (200, no status
    URL) and leaves no list rows behind to purge."""
    from sqlalchemy import func, select

    from cht_interop.ltfu.tables import ltfu_list

    await register_requester(client)
    unknown = [service_request_body(str(uuid.uuid4())) for _ in range(4)]
    res = await client.post("/mediator/service-request", json=bundle(unknown))

    assert res.status_code == 200
    assert "Content-Location" not in res.headers
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["404"] * 4
    async with services.db.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(ltfu_list)) == 0
    assert await jobs_of(services, LIST_PURGE_JOB) == []


async def test_a_list_still_being_written_is_never_purged(services: Services) -> None:
    entry = L.EntryRow(0, follow_up_id="fu-1", request={"service_request": {}})
    async with services.db.transaction() as conn:
        await stage_whole(conn, L.staging("list-1", [entry], [(L.open_key("patient-1", "org-1"), "fu-1")]))
    async with services.db.transaction() as conn:
        assert await L.purge(conn, "list-1") is False
    assert await _list_rows(services, "list-1") == (1, 1)


async def test_a_worker_writes_at_most_a_few_chunks_of_a_list_at_once(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk being written holds its entries, resources and transaction in memory: the rest of
    a long list waits, pending, instead of all of it being built at once."""
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(8)]  # four chunks of two
    res = await client.post(
        "/mediator/service-request", json=bundle([service_request_body(p) for p in patients])
    )
    assert res.status_code == 202
    lists = services.ltfu.staged_lists
    real_write = lists.write
    release = asyncio.Event()
    progress = asyncio.Event()
    running: list[str] = []
    peak = 0
    done = 0

    async def held_write(list_id: str, positions: Any, **kwargs: Any) -> str:
        nonlocal peak, done
        running.append(list_id)
        peak = max(peak, len(running))
        progress.set()
        await release.wait()
        try:
            return await real_write(list_id, positions, **kwargs)
        finally:
            running.remove(list_id)
            done += 1
            progress.set()

    async def until(condition: Any) -> None:
        async with asyncio.timeout(20):
            while not condition():
                progress.clear()
                await progress.wait()

    monkeypatch.setattr(lists, "write", held_write)
    stop = asyncio.Event()
    worker = asyncio.create_task(OutboxWorker(services.db, services.handlers, services.settings).run(stop))
    await until(lambda: len(running) >= WRITES_AT_ONCE)
    statuses = sorted(j.status for j in await jobs_of(services, LIST_WRITE_JOB))
    assert statuses == ["pending"] * (4 - WRITES_AT_ONCE) + ["running"] * WRITES_AT_ONCE
    release.set()
    await until(lambda: done == 4)
    stop.set()
    await asyncio.wait_for(worker, 20)
    assert peak == WRITES_AT_ONCE
    written = await client.get(status_path(res))
    assert [e["response"]["status"] for e in written.json()["entry"]] == ["201 Created"] * 8


async def test_a_long_list_names_its_patients_before_the_start_lock_and_sees_starts_made_meanwhile(
    client: httpx.AsyncClient, services: Services, drain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long list resolves its requester and patients before taking the start lock, so other
    clients' follow-ups are not held up meanwhile; a follow-up started for one of its patients in
    between is still found under the lock: that entry answers with it, no second follow-up."""
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(4)]
    duplicates = services.ltfu.duplicates
    resolve = duplicates.resolve
    lock_held_while_the_list_resolved: list[bool] = []
    single: list[httpx.Response] = []

    async def resolve_then_a_single_starts(requests: Any, **kwargs: Any) -> Any:
        named = await resolve(requests, **kwargs)
        if len(requests) == len(patients):  # the list (the single resolves under the lock)
            lock_held_while_the_list_resolved.append(duplicates.lock.locked())
            if duplicates.lock.locked():
                return named  # a single started now would wait for the list: nothing to see
            single.append(
                await client.post("/mediator/service-request", json=service_request_body(patients[0]))
            )
        return named

    monkeypatch.setattr(duplicates, "resolve", resolve_then_a_single_starts)
    res = await client.post(
        "/mediator/service-request", json=bundle([service_request_body(p) for p in patients])
    )

    assert lock_held_while_the_list_resolved == [False]
    assert single[0].status_code == 201
    assert res.status_code == 202
    entries = res.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200 OK"] + ["202 Accepted"] * 3
    assert "open follow-up for this patient and requester exists" in diagnostics(entries[0])
    subscription = single[0].json()  # the reference's answer: the follow-up's Subscription
    assert {"relation": "subscription", "url": f"Subscription/{subscription['id']}"} in entries[0]["link"]
    await drain()
    assert len(await fhir_all(client, "Task")) == len(patients)  # one follow-up each, not two for the first
