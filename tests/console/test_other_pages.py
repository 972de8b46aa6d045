"""LTFU lists (progress, per-entry answers), subscriptions."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import httpx
import pytest

from cht_interop.ltfu import lists as L
from cht_interop.services import Services
from tests.ltfu.conftest import push_patient, register_requester, service_request_body


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # lists of more than 3 entries are staged; written 2 follow-ups per background job
    return {"LTFU_LIST_SYNC_MAX": 3, "LTFU_LIST_CHUNK": 2}


def flat(page: httpx.Response) -> str:
    assert page.status_code == 200, page.text
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


async def test_a_staged_list_shows_its_progress_then_every_entrys_answer(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, drain: Any
) -> None:
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(4)]
    entries = [{"resource": service_request_body(p)} for p in patients]
    entries.append({"resource": service_request_body("not-a-known-patient")})
    res = await client.post(
        "/mediator/service-request", json={"resourceType": "Bundle", "type": "batch", "entry": entries}
    )
    assert res.status_code == 202
    list_id = res.headers["Content-Location"].rsplit("/", 1)[1]

    staged = flat(await admin.get("/console/lists"))
    assert list_id in staged and "0 of 4" in staged  # 5 entries, 4 accepted for writing
    await drain()
    done = flat(await admin.get("/console/lists"))
    assert "4 of 4" in done
    detail = flat(await admin.get(f"/console/lists/{list_id}"))
    assert "4 of 4 written" in detail
    assert detail.count("201 Created") == 4
    assert re.search(r"4 done 404 \S* ?Patient not-a-known-patient is not known yet", detail), detail
    assert (await admin.get("/console/lists/no-such-list")).status_code == 404


async def test_a_list_whose_staging_never_finished_is_not_shown(
    admin: httpx.AsyncClient, services: Services
) -> None:
    """A list is staged in turns; one left half-staged (its process killed between two) was never
    answered to its sender: the console shows neither it nor its entries (until it is closed)."""
    rows = L.staging("half-staged", [L.EntryRow(0, follow_up_id="fu-1", request={})], [])
    async with services.db.transaction() as conn:
        await L.open_list(conn, rows.list_id, 1, None)
        await L.stage_rows(conn, rows)

    assert "half-staged" not in flat(await admin.get("/console/lists"))
    assert (await admin.get("/console/lists/half-staged")).status_code == 404


async def test_subscriptions_are_listed_with_where_they_call_back(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    await register_requester(client)
    res = await client.post(
        "/mediator/service-request", json=service_request_body(await push_patient(client))
    )
    assert res.status_code == 201
    page = flat(await admin.get("/console/subscriptions"))
    assert "active" in page and "https://emr.example.org/fhir-callback" in page
    assert "Encounter?identifier=" in page
    assert "emr.example.org" not in flat(await admin.get("/console/subscriptions", params={"status": "off"}))
    assert (await admin.get("/console/subscriptions", params={"status": "bogus"})).status_code == 400
