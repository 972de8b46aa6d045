"""The follow-ups pages: filters, key paging through every follow-up, one follow-up's timeline."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

import httpx
import pytest

from cht_interop.console import pages
from cht_interop.delivery import outbox
from cht_interop.fhir import session as fhir_session
from cht_interop.fhir.datetimes import now_us
from cht_interop.services import Services
from tests.ltfu.conftest import (
    encounter_body,
    fhir_all,
    push_patient,
    register_requester,
    service_request_body,
)
from tests.support.live import serve_in_thread
from tests.support.receiver import CallbackReceiver

OUTCOME = {
    "url": "urn:cht-interop:ltfu-outcome",
    "valueCodeableConcept": {
        "coding": [{"system": "urn:cht-interop:CodeSystem/ltfu-outcome", "code": "returned_to_care"}]
    },
}
ROW = re.compile(r'href="/console/follow-ups/([^"]+)">Task/')
NEXT = re.compile(r'<a rel="next" href="([^"]+)"')


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"ALLOW_PRIVATE_CALLBACKS": True}


@pytest.fixture
def receiver() -> Iterator[tuple[CallbackReceiver, str]]:
    r = CallbackReceiver()
    with serve_in_thread(r.app()) as url:
        yield r, url


@dataclass
class World:
    org_a: str
    org_b: str
    patients: list[str]  # CHT ids; [0] completed, [0..1] from org A, the rest from org B
    tasks: list[dict[str, Any]]

    def task_of_patient(self, cht_id: str) -> dict[str, Any]:
        return next(t for t in self.tasks if t["_patient"] == cht_id)


async def make_world(client: httpx.AsyncClient, drain: Any, callback: str) -> World:
    org_a = await register_requester(client, "org-a", f"{callback}/a")
    org_b = await register_requester(client, "org-b", f"{callback}/b")
    patients = [await push_patient(client) for _ in range(7)]
    sr_ids = []
    for p in patients[:2]:
        res = await client.post("/mediator/service-request", json=service_request_body(p, "org-a"))
        assert res.status_code == 201, res.text
        sr_ids.append(res.headers["Location"].rsplit("/", 1)[1])
    # five in one list: written in one transaction, so several share their last-change instant
    listed = {"resourceType": "Bundle", "type": "batch"}
    listed["entry"] = [{"resource": service_request_body(p, "org-b")} for p in patients[2:]]  # type: ignore[assignment]
    assert (await client.post("/mediator/service-request", json=listed)).status_code == 200
    await drain()
    enc = encounter_body(patients[0], "rep-1", basedOn=[{"reference": f"ServiceRequest/{sr_ids[0]}"}])
    enc["extension"] = [OUTCOME]
    assert (await client.post("/mediator/encounter", json=enc)).status_code == 201
    await drain()
    tasks = await fhir_all(client, "Task")
    stored_patients = {p["id"]: p["identifier"][0]["value"] for p in await fhir_all(client, "Patient")}
    for t in tasks:
        t["_patient"] = stored_patients[t["for"]["reference"].split("/")[1]]
    return World(org_a, org_b, patients, tasks)


@pytest.fixture
async def world(client: httpx.AsyncClient, drain: Any, receiver: tuple[CallbackReceiver, str]) -> World:
    return await make_world(client, drain, receiver[1])


def task_ids(page: httpx.Response) -> list[str]:
    assert page.status_code == 200, page.text
    return ROW.findall(page.text)


@pytest.fixture
def coarse_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The FHIR store stamps its writes to the minute: rows sharing their last-change instant across
    a page boundary, whatever the machine's speed (the cursor's hard case, made certain)."""
    minute = 60_000_000
    monkeypatch.setattr(fhir_session, "now_us", lambda: now_us() // minute * minute)


async def test_paging_walks_every_follow_up_once_last_changed_first(
    admin: httpx.AsyncClient, coarse_clock: None, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    seen: list[str] = []
    page = await admin.get("/console/follow-ups")
    pages_walked = 1
    while True:
        ids = task_ids(page)
        assert len(ids) <= 2
        seen += ids
        link = NEXT.search(page.text)
        if link is None:
            break
        page = await admin.get(unescape(link.group(1)))
        pages_walked += 1
    assert pages_walked == 4
    assert sorted(seen) == sorted(t["id"] for t in world.tasks)  # each once
    by_id = {t["id"]: t["meta"]["lastUpdated"] for t in world.tasks}
    changes = [by_id[i] for i in seen]
    assert changes == sorted(changes, reverse=True)
    # the 7 rows fall in at most 2 minutes: 4 or more share an instant, so a tie spans pages
    assert len(set(changes)) <= 2


async def test_filters(admin: httpx.AsyncClient, world: World) -> None:
    async def ids(**params: str) -> set[str]:
        return set(task_ids(await admin.get("/console/follow-ups", params=params)))

    done = world.task_of_patient(world.patients[0])
    assert await ids(status="completed") == {done["id"]}
    assert await ids(outcome="returned_to_care") == {done["id"]}
    assert await ids(status="accepted") == {t["id"] for t in world.tasks} - {done["id"]}
    from_b = {t["id"] for t in world.tasks if t["requester"]["reference"] == f"Organization/{world.org_b}"}
    assert len(from_b) == 5 and await ids(requester=world.org_b) == from_b
    second = world.task_of_patient(world.patients[1])
    assert await ids(patient=world.patients[1]) == {second["id"]}  # by the patient's CHT id
    assert await ids(patient=second["for"]["reference"].split("/")[1]) == {second["id"]}  # or Patient id
    today = datetime.now(UTC).date()
    assert len(await ids(since=today.isoformat(), until=today.isoformat())) == 7
    assert await ids(since=(today + timedelta(days=1)).isoformat()) == set()
    assert await ids(until=(today - timedelta(days=1)).isoformat()) == set()
    assert await ids(status="completed", requester=world.org_b) == set()


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"status": "lost"}, "unknown status"),
        ({"outcome": "x"}, "unknown outcome"),
        ({"since": "06/12/2026"}, "since must be a date"),
        ({"patient": "a,b"}, "patient must be a plain id"),
        ({"cursor": "garbage"}, "the page link is damaged"),
    ],
)
async def test_bad_filters_are_a_400_saying_what_is_wrong(
    admin: httpx.AsyncClient, params: dict[str, str], said: str
) -> None:
    res = await admin.get("/console/follow-ups", params=params)
    assert res.status_code == 400
    assert said in unescape(res.text)


async def test_timeline_of_a_completed_follow_up(
    admin: httpx.AsyncClient, world: World, receiver: tuple[CallbackReceiver, str]
) -> None:
    done = world.task_of_patient(world.patients[0])
    page = await admin.get(f"/console/follow-ups/{done['id']}")
    assert page.status_code == 200
    text = unescape(re.sub(r"<[^>]+>", " ", page.text))
    text = " ".join(text.split())
    assert "Follow-up requested" in text and "Missed ART refill" in text
    assert re.search(r"Follow-up record sent to the CHT job #\d+ success · HTTP 200 · CHT record \S+", text)
    assert "Encounter/" in text and "stored (the CHW's answer)" in text
    assert re.search(r"Callback to the requester job #\d+ success · HTTP 200", text)
    assert "Follow-up completed" in text
    assert "Patient found and returning to care" in text
    # in time order: requested, sent to the CHT, ..., completed last
    assert (
        text.index("Follow-up requested")
        < text.index("Follow-up record sent")
        < text.index("Follow-up completed")
    )
    (got,) = receiver[0].requests
    assert got.path.startswith("/a/Encounter/")


async def test_unknown_follow_up_is_404(admin: httpx.AsyncClient, world: World) -> None:
    assert (await admin.get("/console/follow-ups/nope")).status_code == 404
    org_task_free = await admin.get(f"/console/follow-ups/{world.org_a}")
    assert org_task_free.status_code == 404


async def test_dashboard_counts(admin: httpx.AsyncClient, world: World, services: Services) -> None:
    page = await admin.get("/console/")
    assert page.status_code == 200
    flat = " ".join(re.sub(r"<[^>]+>", " ", page.text).split())
    assert "7 received in the last 24 h" in flat and "1 completed in the last 24 h" in flat
    assert "completed 1" in flat and "accepted 6" in flat
    assert "Patient found and returning to care 1" in flat
    assert "Database up sqlite: answers" in flat or "Database up postgresql: answers" in flat
    assert "FHIR backend up embedded store: answers (7 Tasks stored)" in flat
    # the CHT double serves records only: the check (GET /api/v1/settings as our user) says so
    assert re.search(r"CHT down http://127\.0\.0\.1:\d+: ChtError: answered 404", flat)
    assert "OpenHIM not used" in flat
    async with services.db.connect() as conn:
        later = [
            j for j in await outbox.list_jobs(conn, status="pending") if j.next_attempt_at > outbox.utcnow()
        ]
    assert later and f"Waiting: scheduled for later (e.g. expiry checks) {len(later)}" in flat
    assert "Nothing due" in flat


async def test_paging_across_follow_ups_seconds_apart_widens_its_window(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later pages search a growing window before the cursor: rows further apart than the first
    window (1 s) are still all found, in order."""
    monkeypatch.setattr(pages, "PAGE_SIZE", 1)
    await register_requester(client)
    for n in range(3):
        if n:
            await asyncio.sleep(1.2)
        res = await client.post(
            "/mediator/service-request", json=service_request_body(await push_patient(client))
        )
        assert res.status_code == 201
    tasks = {t["id"]: t["meta"]["lastUpdated"] for t in await fhir_all(client, "Task")}
    seen: list[str] = []
    page = await admin.get("/console/follow-ups")
    while True:
        seen += task_ids(page)
        link = NEXT.search(page.text)
        if link is None:
            break
        page = await admin.get(unescape(link.group(1)))
    assert seen == sorted(tasks, key=tasks.__getitem__, reverse=True)
