"""On SQLite a long LTFU list checks and stages holding only its own keys (``ltfu/claims.py``):
single follow-ups for other patients are answered meanwhile; one for a patient of the list waits
for it, then answers with the list's follow-up. It stages a turn at a time, each its own
transaction (``staged_lists._stage_turn``), so SQLite's one writer is free between two. (On
PostgreSQL each turn takes the start lock whole, ``test_replicas.py``; what the turns leave
between them, after an error or a crash: ``test_list_staging.py``, both databases.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from cht_interop.ltfu import lists as L
from cht_interop.ltfu import staged_lists
from cht_interop.ltfu.tables import ltfu_list, ltfu_list_entry, ltfu_staged_key
from cht_interop.services import Services
from tests.ltfu.conftest import fhir_all, push_patient, register_requester, service_request_body

# Generous bound on a request that must not wait for the list: it only turns a hang (the single
# waiting for a list that waits for it) into a failure, it measures nothing.
HANG = 30


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"LTFU_LIST_SYNC_MAX": 3}  # lists of more than 3 entries are staged


def bundle(patients: list[str]) -> dict[str, Any]:
    entries = [{"resource": service_request_body(p)} for p in patients]
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


def during_the_lists_check(
    services: Services, monkeypatch: pytest.MonkeyPatch, key: str, run: Any
) -> list[bool]:
    """Run ``run`` when the list (4 patients) reads its patients' Tasks: it has claimed its keys
    then, and not staged them yet. Returns whether ``key`` was still claimed after."""
    duplicates = services.ltfu.duplicates
    tasks_of = duplicates.patients.tasks_of
    claimed: list[bool] = []

    async def hooked(patient_ids: set[str]) -> Any:
        if len(patient_ids) == 4 and not claimed:
            await run()
            claimed.append(duplicates.claims.held(key))
        return await tasks_of(patient_ids)

    monkeypatch.setattr(duplicates.patients, "tasks_of", hooked)
    return claimed


def note_waiting_claims(
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    after_take: Callable[[list[str]], Awaitable[None]] | None = None,
) -> asyncio.Event:
    """An event set when a claimer is about to wait for keys another holds; ``after_take``: run
    with the keys of every claim once taken (before the claimer goes on)."""
    claims = services.ltfu.duplicates.claims
    take = claims.take
    waiting = asyncio.Event()

    async def noted_take(keys: Any, into: set[str]) -> bool:
        keys = list(keys)
        if any(claims.held(k) for k in keys):
            waiting.set()
        waited = await take(keys, into)
        if after_take is not None:
            await after_take(keys)
        return waited

    monkeypatch.setattr(claims, "take", noted_take)
    return waiting


async def list_and_key(client: httpx.AsyncClient) -> tuple[list[str], str]:
    """A requester, four patients, and the key of the first one's follow-up from that requester."""
    org_id = await register_requester(client)
    patients = [await push_patient(client) for _ in range(4)]
    (first,) = await fhir_all(client, "Patient", identifier=patients[0])
    return patients, L.open_key(first["id"], org_id)


async def test_a_single_for_another_patient_is_answered_while_a_list_holds_its_keys(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    patients, key = await list_and_key(client)
    other = await push_patient(client)
    answered: list[httpx.Response] = []

    async def single_for_another_patient() -> None:
        request = client.post("/mediator/service-request", json=service_request_body(other))
        answered.append(await asyncio.wait_for(request, HANG))

    claimed = during_the_lists_check(services, monkeypatch, key, single_for_another_patient)
    res = await client.post("/mediator/service-request", json=bundle(patients))

    assert claimed == [True]
    assert answered[0].status_code == 201  # answered while the list was being checked
    assert res.status_code == 202
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["202 Accepted"] * 4


async def test_a_single_for_a_patient_of_the_list_waits_for_it_and_returns_its_follow_up(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch, drain: Any
) -> None:
    patients, key = await list_and_key(client)
    waiting = note_waiting_claims(services, monkeypatch)  # the single, about to wait for the list's claim
    single: list[asyncio.Task[httpx.Response]] = []

    async def single_for_its_first_patient() -> None:
        single.append(
            asyncio.create_task(
                client.post("/mediator/service-request", json=service_request_body(patients[0]))
            )
        )
        await waiting.wait()
        assert not single[0].done()  # it waits for the list

    claimed = during_the_lists_check(services, monkeypatch, key, single_for_its_first_patient)
    res = await client.post("/mediator/service-request", json=bundle(patients))
    answer = await single[0]

    assert claimed == [True]
    assert res.status_code == 202
    first = res.json()["entry"][0]
    assert first["response"]["status"] == "202 Accepted"
    assert answer.status_code == 202, answer.text  # the list's follow-up, being written
    assert first["link"][0]["url"] in answer.headers["Link"]
    await drain()
    assert len(await fhir_all(client, "Task")) == len(patients)


async def test_a_list_naming_a_patient_whose_single_holds_its_key_waits_and_returns_its_follow_up(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch, drain: Any
) -> None:
    patients, key = await list_and_key(client)
    sent: list[asyncio.Task[httpx.Response]] = []

    async def send_the_list(keys: list[str]) -> None:
        if key in keys and not sent:  # the single holds its key, has not written yet
            sent.append(asyncio.create_task(client.post("/mediator/service-request", json=bundle(patients))))
            await list_waiting.wait()

    # the list, about to wait for the single's claim
    list_waiting = note_waiting_claims(services, monkeypatch, after_take=send_the_list)
    single = await client.post("/mediator/service-request", json=service_request_body(patients[0]))
    res = await sent[0]

    assert single.status_code == 201
    assert res.status_code == 202
    first = res.json()["entry"][0]
    assert first["response"]["status"] == "200 OK"  # the single's follow-up, not a second one
    assert {"relation": "subscription", "url": f"Subscription/{single.json()['id']}"} in first["link"]
    await drain()
    assert len(await fhir_all(client, "Task")) == len(patients)


async def test_a_single_for_another_patient_is_written_between_two_turns_of_a_list(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch, drain: Any
) -> None:
    """SQLite has one writer. A long list stages a turn per transaction (``staged_lists.py``):
    a single that asks for the writer during the list's first turn gets it before the second,
    not after the whole list (one 10,000-entry transaction held it ~120 ms)."""
    monkeypatch.setattr(staged_lists, "LIST_TURN_ENTRIES", 2)  # four entries: two turns
    patients, _key = await list_and_key(client)
    other = await push_patient(client)
    db, stage_rows, transaction = services.db, L.stage_rows, services.db.transaction
    lists_task: list[asyncio.Task[Any] | None] = []
    single_asked = asyncio.Event()
    single: list[asyncio.Task[httpx.Response]] = []
    tasks_at_each_turn: list[int] = []

    def noted_transaction(*, bulk: bool = False) -> Any:
        if lists_task and asyncio.current_task() is not lists_task[0] and not bulk:
            single_asked.set()  # it queues for the writer in this same step, before anyone runs
        return transaction(bulk=bulk)

    async def turn_with_a_single(conn: Any, rows: L.Staging) -> None:
        tasks_at_each_turn.append(len(await fhir_all(client, "Task")))
        if not single:  # the first turn holds the writer: a single for another patient asks for it
            lists_task.append(asyncio.current_task())
            request = client.post("/mediator/service-request", json=service_request_body(other))
            single.append(asyncio.create_task(request))
            await asyncio.wait_for(single_asked.wait(), HANG)
        await stage_rows(conn, rows)

    monkeypatch.setattr(db, "transaction", noted_transaction)
    monkeypatch.setattr(L, "stage_rows", turn_with_a_single)
    res = await client.post("/mediator/service-request", json=bundle(patients))

    assert res.status_code == 202
    assert (await single[0]).status_code == 201
    assert tasks_at_each_turn == [0, 1]  # the single's follow-up was in before the second turn
    await drain()
    assert len(await fhir_all(client, "Task")) == len(patients) + 1


async def five_patients(client: httpx.AsyncClient) -> tuple[str, list[str]]:
    """A requester (its Organization's id) and five patients (their CHT ids)."""
    org_id = await register_requester(client)
    return org_id, [await push_patient(client) for _ in range(5)]


async def rows_left(services: Services) -> tuple[int, int, int]:
    """How many lists, list entries and staged keys the database holds."""
    async with services.db.connect() as conn:
        counts = [
            await conn.scalar(select(func.count()).select_from(table))
            for table in (ltfu_list, ltfu_list_entry, ltfu_staged_key)
        ]
    return int(counts[0] or 0), int(counts[1] or 0), int(counts[2] or 0)
