"""On SQLite a long LTFU list is staged a slice at a time (``staged_lists._commit_in_slices``),
each slice its own transaction, and counts for nothing until its last slice is in: no status, no
staged key a request could be answered with. A slice that fails takes the earlier ones back.
(PostgreSQL stages a list in one transaction; what a crash between slices leaves, on either
database: ``test_list_staging.py``.)"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.ltfu import lists as L
from cht_interop.ltfu import staged_lists
from cht_interop.ltfu.tables import ltfu_list, ltfu_list_entry, ltfu_staged_key
from cht_interop.services import Services
from tests.ltfu.conftest import fhir_all, push_patient, register_requester, service_request_body


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"LTFU_LIST_SYNC_MAX": 3}  # lists of more than 3 entries are staged


@pytest.fixture(autouse=True)
def slices_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """A five-entry list is staged in three slices."""
    monkeypatch.setattr(staged_lists, "STAGE_SLICE_ENTRIES", 2)


def bundle(patients: list[str]) -> dict[str, Any]:
    entries = [{"resource": service_request_body(p)} for p in patients]
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


async def five_patients(client: httpx.AsyncClient) -> tuple[str, list[str]]:
    """A requester (its Organization's id) and five patients (their CHT ids)."""
    org_id = await register_requester(client)
    return org_id, [await push_patient(client) for _ in range(5)]


async def open_key(client: httpx.AsyncClient, cht_id: str, org_id: str) -> str:
    (patient,) = await fhir_all(client, "Patient", identifier=cht_id)
    return L.open_key(patient["id"], org_id)


async def rows_left(services: Services) -> tuple[int, int, int]:
    """How many lists, list entries and staged keys the database holds."""
    async with services.db.connect() as conn:
        counts = [
            await conn.scalar(select(func.count()).select_from(table))
            for table in (ltfu_list, ltfu_list_entry, ltfu_staged_key)
        ]
    return int(counts[0] or 0), int(counts[1] or 0), int(counts[2] or 0)


async def test_a_list_counts_only_once_its_last_slice_is_in(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch, drain: Any
) -> None:
    """Between two slices the earlier ones are committed, yet the list has no status and its keys
    answer nobody; once the last is in, both count, and the list is written as any other."""
    org_id, patients = await five_patients(client)
    first_key = await open_key(client, patients[0], org_id)
    stage_rows = L.stage_rows
    seen_between: list[tuple[int, int, int, dict[str, L.StagedFollowUp]]] = []

    async def observed(conn: AsyncConnection, rows: L.Staging) -> None:
        if rows.entry_rows[0][1] > 0:  # a slice after the first: the ones before are committed
            status = await client.get(f"/mediator/ltfu-lists/{rows.list_id}")
            async with services.db.connect() as reader:
                staged = await L.find_staged(reader, [first_key])
                any_staged = await L.any_staged(reader)
            entries = (await rows_left(services))[1]
            seen_between.append((status.status_code, entries, int(any_staged), staged))
        await stage_rows(conn, rows)

    monkeypatch.setattr(L, "stage_rows", observed)
    res = await client.post("/mediator/service-request", json=bundle(patients))

    assert res.status_code == 202, res.text
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["202 Accepted"] * 5
    # two slices after the first; the entries of the slices before are in, nothing counts yet
    assert seen_between == [(404, 2, 0, {}), (404, 4, 0, {})]
    status = await client.get(res.headers["Content-Location"].removeprefix("http://test"))
    assert status.status_code == 202  # counted: being written
    async with services.db.connect() as reader:
        assert first_key in await L.find_staged(reader, [first_key])
    await drain()
    assert len(await fhir_all(client, "Task")) == 5
    assert await rows_left(services) == (1, 5, 0)  # written: the keys are freed, the status kept


async def test_a_slice_that_fails_takes_the_earlier_ones_back(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch, drain: Any
) -> None:
    """The database times out on the second slice: the client is told to retry (nothing was
    saved, and indeed nothing is left), and the same list sent again is written once."""
    _org_id, patients = await five_patients(client)
    stage_rows = L.stage_rows
    slices: list[int] = []

    async def second_slice_fails(conn: AsyncConnection, rows: L.Staging) -> None:
        slices.append(len(rows.entry_rows))
        if len(slices) == 2:
            raise PoolTimeout("every pooled connection is busy")
        await stage_rows(conn, rows)

    monkeypatch.setattr(L, "stage_rows", second_slice_fails)
    failed = await client.post("/mediator/service-request", json=bundle(patients))

    assert failed.status_code == 503, failed.text
    assert "Retry-After" in failed.headers
    assert await rows_left(services) == (0, 0, 0)

    monkeypatch.setattr(L, "stage_rows", stage_rows)
    again = await client.post("/mediator/service-request", json=bundle(patients))
    assert again.status_code == 202
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["202 Accepted"] * 5
    await drain()
    assert len(await fhir_all(client, "Task")) == 5
