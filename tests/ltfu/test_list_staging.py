"""A long LTFU list is checked and staged a turn at a time (``staged_lists.LIST_TURN_ENTRIES``),
each turn committing its entries, keys and write jobs. Between two turns the list has no status
yet, but what the turns before accepted counts: a request for one of those follow-ups is answered
with it. A turn that fails, or a process killed between two, leaves those turns' follow-ups to be
written once, and the list is closed (given a status) by its own error path or the next list."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.delivery import outbox
from cht_interop.delivery.worker import OutboxWorker
from cht_interop.ltfu import lists as L
from cht_interop.ltfu import staged_lists
from cht_interop.services import Services
from tests.ltfu.conftest import fhir_all, service_request_body
from tests.ltfu.test_list_keys import bundle, five_patients, rows_left


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"LTFU_LIST_SYNC_MAX": 3}  # lists of more than 3 entries are staged


@pytest.fixture(autouse=True)
def turns_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staged_lists, "LIST_TURN_ENTRIES", 2)  # five entries: three turns


def before_the_second_turn(
    services: Services, monkeypatch: pytest.MonkeyPatch, run: Callable[[], Awaitable[None]]
) -> None:
    """Run ``run`` once the list's first turn is committed, before its second takes the start lock."""
    duplicates = services.ltfu.duplicates
    turn = duplicates.turn
    turns: list[int] = []

    def hooked() -> Any:
        turns.append(1)
        if len(turns) != 2:
            return turn()
        return _after(run(), turn)

    monkeypatch.setattr(duplicates, "turn", hooked)


@contextlib.asynccontextmanager
async def _after(first: Awaitable[None], turn: Callable[[], Any]) -> AsyncIterator[Any]:
    await first
    async with turn() as held:
        yield held


def the_second_turn_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database times out as the second turn writes its rows (the first is committed)."""
    stage_rows = L.stage_rows

    async def hooked(conn: AsyncConnection, rows: L.Staging) -> None:
        if rows.entry_rows and rows.entry_rows[0][1] == 2:
            raise PoolTimeout("every pooled connection is busy")
        await stage_rows(conn, rows)

    monkeypatch.setattr(L, "stage_rows", hooked)


async def drain_later(services: Services, seconds: float) -> None:
    """``drain``, the worker's clock ``seconds`` ahead: what falls due by then runs."""
    later = outbox.utcnow() + timedelta(seconds=seconds)
    await OutboxWorker(services.db, services.handlers, services.settings, clock=lambda: later).drain()


def status_path(res: httpx.Response) -> str:
    return res.headers["Content-Location"].removeprefix("http://test")


async def test_between_two_turns_the_list_has_no_status_but_what_it_accepted_counts(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch, drain: Any
) -> None:
    """A single for a patient of the first turn, sent before the second turn, is answered with the
    list's follow-up (202, being written): one follow-up each, however the two interleave."""
    _org_id, patients = await five_patients(client)
    seen: list[tuple[int, int]] = []
    single: list[httpx.Response] = []

    async def between() -> None:
        async with services.db.connect() as conn:
            (list_id,) = await L.still_staging(conn)
        status = await client.get(f"/mediator/ltfu-lists/{list_id}")
        seen.append((status.status_code, (await rows_left(services))[1]))
        single.append(await client.post("/mediator/service-request", json=service_request_body(patients[0])))

    before_the_second_turn(services, monkeypatch, between)
    res = await client.post("/mediator/service-request", json=bundle(patients))

    assert res.status_code == 202, res.text
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["202 Accepted"] * 5
    assert seen == [(404, 2)]  # no status yet; the first turn's two entries are in
    assert single[0].status_code == 202, single[0].text
    assert res.json()["entry"][0]["link"][0]["url"] in single[0].headers["Link"]
    assert (await client.get(status_path(res))).status_code == 202  # closed: being written
    await drain()
    assert len(await fhir_all(client, "Task")) == 5
    assert await rows_left(services) == (1, 5, 0)  # written: the keys are freed, the status kept


async def test_an_entry_for_a_follow_up_of_an_earlier_turn_is_answered_with_it(
    client: httpx.AsyncClient, drain: Any
) -> None:
    """The same patient twice, in two turns: the second is answered 200 with the first's follow-up."""
    _org_id, patients = await five_patients(client)

    res = await client.post("/mediator/service-request", json=bundle([*patients[:3], patients[0]]))

    assert res.status_code == 202, res.text
    entries = res.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["202 Accepted"] * 3 + ["200 OK"]
    assert entries[3]["link"] == entries[0]["link"]  # where the first's Task will be
    await drain()
    assert len(await fhir_all(client, "Task")) == 3


async def test_a_turn_that_fails_keeps_what_the_turns_before_accepted(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch, drain: Any
) -> None:
    """The database times out on the second turn: the client is told to retry; the first turn's
    follow-ups (which another request could have been answered with) are written; the list sent
    again is answered with them, and every follow-up is written once."""
    _org_id, patients = await five_patients(client)

    the_second_turn_fails(monkeypatch)
    failed = await client.post("/mediator/service-request", json=bundle(patients))

    assert failed.status_code == 503, failed.text
    assert "Retry-After" in failed.headers
    assert await rows_left(services) == (1, 2, 2)  # the first turn's, closed

    monkeypatch.undo()
    monkeypatch.setattr(staged_lists, "LIST_TURN_ENTRIES", 2)
    again = await client.post("/mediator/service-request", json=bundle(patients))
    assert again.status_code == 202
    entries = again.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["202 Accepted"] * 5
    assert entries[0]["link"] != entries[2]["link"]
    await drain()
    assert len(await fhir_all(client, "Task")) == 5


async def killed_after_the_first_turn(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch, patients: list[str]
) -> str:
    """What a process killed between the first two turns leaves: the list still staging, its first
    turn (entries, keys, write jobs) committed, nothing else. Its id."""

    async def dead_process_closes_nothing(*args: Any, **kwargs: Any) -> None:
        return None

    # the second turn fails and nothing runs after it (but the process's session ends)
    the_second_turn_fails(monkeypatch)
    monkeypatch.setattr(services.ltfu.staged_lists, "_close", dead_process_closes_nothing)
    assert (await client.post("/mediator/service-request", json=bundle(patients))).status_code == 503
    monkeypatch.undo()
    monkeypatch.setattr(staged_lists, "LIST_TURN_ENTRIES", 2)
    async with services.db.connect() as conn:
        (list_id,) = await L.still_staging(conn)
    return list_id


async def test_what_a_killed_process_staged_is_written_and_the_next_list_closes_it(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch, drain: Any
) -> None:
    _org_id, patients = await five_patients(client)
    crashed = await killed_after_the_first_turn(client, services, monkeypatch, patients)

    single = await client.post("/mediator/service-request", json=service_request_body(patients[0]))
    assert single.status_code == 202, single.text  # accepted by the crashed list: it will be written
    assert (await client.get(f"/mediator/ltfu-lists/{crashed}")).status_code == 404

    res = await client.post("/mediator/service-request", json=bundle(patients))

    assert res.status_code == 202, res.text
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["202 Accepted"] * 5
    await drain()
    assert len(await fhir_all(client, "Task")) == 3  # the next list's; the crashed list's are held
    await drain_later(services, staged_lists.LIST_JOBS_HELD_SECONDS + 1)
    assert len(await fhir_all(client, "Task")) == 5  # two from the crashed list, once their deadline passed
    closed = await client.get(f"/mediator/ltfu-lists/{crashed}")
    assert closed.status_code == 200, closed.text  # closed by the next list, then done
    assert [e["response"]["status"] for e in closed.json()["entry"]] == ["201 Created"] * 2
    assert await rows_left(services) == (2, 7, 0)


@pytest.mark.parametrize("length", [2, 5], ids=["written-now", "staged"])
async def test_one_identifier_twice_in_a_list_is_one_follow_up(
    client: httpx.AsyncClient, drain: Any, length: int
) -> None:
    """Entries carrying one identifier for different patients (within a turn and across turns):
    one ServiceRequest, the others answered 200 with it; no error (the staged keys take each
    identifier once: a second one made the list fail 500)."""
    _org_id, patients = await five_patients(client)
    identifier = [{"system": "https://emr.example.org/referrals", "value": "ref-7"}]
    entries = [{"resource": service_request_body(p, identifier=identifier)} for p in patients[:length]]

    res = await client.post(
        "/mediator/service-request", json={"resourceType": "Bundle", "type": "batch", "entry": entries}
    )

    assert res.status_code == (200 if length <= 3 else 202), res.text
    statuses = [e["response"]["status"] for e in res.json()["entry"]]
    assert statuses[1:] == ["200 OK"] * (length - 1)
    await drain()
    assert len(await fhir_all(client, "ServiceRequest", identifier="ref-7")) == 1
    assert len(await fhir_all(client, "Task")) == 1
