"""A list's follow-ups reach the CHT together, in ``_bulk_docs`` requests, with the outbox worker:
a lost answer resent finds every record there (exactly one each, every Task accepted), and a
record the CHT refuses fails its own follow-up only, not the others of its request."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cht_interop.cht.records import follow_up_record_id
from cht_interop.ltfu import resources as R
from cht_interop.services import Services
from tests.ltfu.conftest import fhir_all, post_list_of_new_patients
from tests.support.cht_double import ChtDouble
from tests.support.cht_gate import Gate
from tests.support.live import serve_in_thread

FOLLOW_UPS = 12


@pytest.fixture(scope="module")
def gate_server() -> Iterator[tuple[Gate, str]]:
    gate = Gate()
    with serve_in_thread(gate.app()) as url:
        yield gate, url


@pytest.fixture(scope="module")
def cht_server(gate_server: tuple[Gate, str]) -> tuple[ChtDouble, str]:
    """The app's CHT is the double behind the gate."""
    gate, url = gate_server
    return gate.double, url


@pytest.fixture
def gate(gate_server: tuple[Gate, str], cht: ChtDouble) -> Gate:
    g, _url = gate_server
    g.lose_answers = g.refuse = g.lost = 0
    return g


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"DELIVERY_INITIAL_BACKOFF_SECONDS": 0.01, "DELIVERY_MAX_BACKOFF_SECONDS": 0.05}


async def start_list(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """A list of follow-ups, one per new patient: their Tasks (the CHT writes wait in the outbox)."""
    await post_list_of_new_patients(client, FOLLOW_UPS)
    tasks = await fhir_all(client, "Task")
    assert len(tasks) == FOLLOW_UPS
    return tasks


def follow_up_of(task: dict[str, Any]) -> str:
    value = R.first_identifier_value(task, R.FOLLOW_UP_SYSTEM)
    assert value is not None
    return value


def cht_record_of(task: dict[str, Any]) -> str | None:
    return R.first_identifier_value(task, R.CHT_RECORD_SYSTEM)


async def drain_until_settled(client: httpx.AsyncClient, drain: Any) -> list[dict[str, Any]]:
    """Run the worker until no Task waits for the CHT (retries come back after a short backoff)."""
    for _ in range(200):
        await drain()
        tasks = await fhir_all(client, "Task")
        if all(t["status"] != "requested" for t in tasks):
            return tasks
        await asyncio.sleep(0.05)  # the retry's backoff (at most DELIVERY_MAX_BACKOFF_SECONDS)
    raise AssertionError("the follow-ups never left 'requested'")


async def test_a_lost_bulk_answer_resent_gives_exactly_one_record_each(
    client: httpx.AsyncClient, drain: Any, gate: Gate
) -> None:
    tasks = await start_list(client)
    gate.lose_answers = 1  # the CHT stores the first request's records; its answer never arrives

    settled = await drain_until_settled(client, drain)

    assert gate.lost == 1
    records = gate.double.records_of_form("INTEROP_FOLLOW_UP")
    per_task = Counter(r["fields"]["task_id"] for r in records)
    assert per_task == Counter({t["id"]: 1 for t in tasks})  # exactly one record per follow-up
    assert {t["status"] for t in settled} == {"accepted"}
    for task in settled:
        assert cht_record_of(task) == follow_up_record_id(follow_up_of(task))
    # the resend was answered "conflict" for every record, all read back in one call
    resent = [r for r in gate.double.requests if r.path == "/medic/_all_docs"]
    assert len(resent) == 1


@pytest.mark.parametrize("how", ["taken by another form", "refused by the CHT"])
async def test_a_record_the_cht_refuses_fails_its_follow_up_only(
    client: httpx.AsyncClient, drain: Any, gate: Gate, services: Services, how: str
) -> None:
    tasks = await start_list(client)
    refused = tasks[4]
    record_id = follow_up_record_id(follow_up_of(refused))
    if how == "taken by another form":
        gate.double.records[record_id] = {
            "_id": record_id,
            "_rev": "1-other",
            "type": "data_record",
            "form": "SOME_OTHER_FORM",
            "fields": {},
        }
    else:
        gate.double.reject_doc(record_id, "validate_doc_update said no")

    settled = {t["id"]: t for t in await drain_until_settled(client, drain)}

    assert settled[refused["id"]]["status"] == "failed"
    assert "The CHT did not take the follow-up" in settled[refused["id"]]["statusReason"]["text"]
    others = [t for t in settled.values() if t["id"] != refused["id"]]
    assert {t["status"] for t in others} == {"accepted"}
    assert len(gate.double.records_of_form("INTEROP_FOLLOW_UP")) == FOLLOW_UPS - 1
    # it went with others, in the same request
    carrying = [ids for ids in gate.bulk_requests() if record_id in ids]
    assert carrying and all(len(ids) > 1 for ids in carrying)


async def test_the_workers_records_go_over_the_pooled_session_not_httpx(
    client: httpx.AsyncClient, drain: Any, gate: Gate, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process's httpx client costs ~10 times aiohttp's CPU per call: the records avoid it."""
    tasks = await start_list(client)
    over_httpx: list[str] = []
    send = services.http.request

    async def noted(method: str, url: Any, **kwargs: Any) -> httpx.Response:
        over_httpx.append(str(url))
        return await send(method, url, **kwargs)

    monkeypatch.setattr(services.http, "request", noted)

    settled = await drain_until_settled(client, drain)

    assert {t["status"] for t in settled} == {"accepted"}
    assert len(gate.double.records_of_form("INTEROP_FOLLOW_UP")) == len(tasks)
    assert [u for u in over_httpx if "/medic/" in u] == []
