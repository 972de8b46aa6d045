"""What a process killed between two slices of a long LTFU list's staging leaves (a list still
``staging``, some of its entries and keys) is never counted, and the next list staged drops it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from cht_interop.ltfu import lists as L
from cht_interop.services import Services
from tests.ltfu.conftest import fhir_all, service_request_body
from tests.ltfu.test_list_keys import bundle, five_patients, open_key, rows_left


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"LTFU_LIST_SYNC_MAX": 3}  # lists of more than 3 entries are staged


async def left_by_a_crash(services: Services, keys: list[str]) -> str:
    """What a process killed between two slices leaves: a list still ``staging``, one entry of
    it and the keys of its follow-ups."""
    list_id = str(uuid.uuid4())
    rows = L.staging(
        list_id,
        [L.EntryRow(0, follow_up_id="fu-crashed", request={"service_request": {}})],
        [(k, "fu-crashed") for k in keys],
    )
    async with services.db.transaction() as conn:
        await L.open_list(conn, rows, None, complete=False)
        await L.stage_rows(conn, rows)
    return list_id


async def test_what_a_crash_between_slices_left_answers_nobody(
    client: httpx.AsyncClient, services: Services
) -> None:
    """A single follow-up for a patient the crashed list held is written (it is not answered with
    a follow-up nobody will write), and the crashed list has no status."""
    org_id, patients = await five_patients(client)
    crashed = await left_by_a_crash(services, [await open_key(client, patients[0], org_id)])

    single = await client.post("/mediator/service-request", json=service_request_body(patients[0]))

    assert single.status_code == 201, single.text
    assert (await client.get(f"/mediator/ltfu-lists/{crashed}")).status_code == 404


async def test_the_next_list_drops_what_a_crash_between_slices_left(
    client: httpx.AsyncClient, services: Services, drain: Any
) -> None:
    """The crashed list held a key the next list stages too (the database takes each key once):
    the next list is staged and written, and nothing of the crashed one is left."""
    org_id, patients = await five_patients(client)
    await left_by_a_crash(services, [await open_key(client, patients[0], org_id)])

    res = await client.post("/mediator/service-request", json=bundle(patients))

    assert res.status_code == 202, res.text
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["202 Accepted"] * 5
    assert await rows_left(services) == (1, 5, 5)  # the new list's alone
    await drain()
    assert len(await fhir_all(client, "Task")) == 5
