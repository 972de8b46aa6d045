"""Follow-up starts racing a staged list's background write: one follow-up per patient + requester.

A staged list's chunk commits its Tasks, then frees its keys in a second transaction. A duplicate
check reading the Tasks before that commit and the keys after that free would find neither; these
tests run the chunk write at exactly that point (the seam: just before the staged-key read).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from cht_interop.ltfu import duplicates
from cht_interop.ltfu.duplicates import DuplicateCheck
from cht_interop.ltfu.resources import OPEN_TASK_STATUSES
from tests.ltfu.conftest import fhir_all, push_patient, register_requester, service_request_body


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # lists of more than 3 entries are staged, written in one chunk
    return {"LTFU_LIST_SYNC_MAX": 3, "LTFU_LIST_CHUNK": 50}


def bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": e} for e in entries]}


def before_staged_key_read(monkeypatch: pytest.MonkeyPatch, run: Callable[[], Awaitable[Any]]) -> list[int]:
    """Run ``run`` once, just before the next duplicate check reads the staged keys."""
    original = DuplicateCheck._staged_duplicates
    ran: list[int] = []

    async def hooked(self: DuplicateCheck, *args: Any, **kwargs: Any) -> Any:
        if not ran:
            ran.append(1)
            await run()
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(DuplicateCheck, "_staged_duplicates", hooked)
    return ran


async def open_tasks_of(client: httpx.AsyncClient, patient: str) -> list[dict[str, Any]]:
    (found,) = await fhir_all(client, "Patient", identifier=patient)
    tasks = await fhir_all(client, "Task", patient=f"Patient/{found['id']}")
    return [t for t in tasks if t["status"] in OPEN_TASK_STATUSES]


async def stage_list(client: httpx.AsyncClient, patients: list[str]) -> httpx.Response:
    res = await client.post(
        "/mediator/service-request", json=bundle([service_request_body(p) for p in patients])
    )
    assert res.status_code == 202, res.text
    return res


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "whole-lock"])
async def test_a_single_racing_a_staged_chunk_returns_the_lists_follow_up(
    client: httpx.AsyncClient, drain: Any, monkeypatch: pytest.MonkeyPatch, keyed: bool
) -> None:
    """``whole-lock``: on PostgreSQL the batch takes the start lock whole (as one of more than
    ``KEYED_START_MAX`` requests does), and reads its Tasks with its patients."""
    if not keyed:
        monkeypatch.setattr(duplicates, "KEYED_START_MAX", 0)
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(4)]
    await stage_list(client, patients)
    ran = before_staged_key_read(monkeypatch, drain)  # the list's chunk: Tasks committed, keys freed

    single = await client.post("/mediator/service-request", json=service_request_body(patients[0]))

    assert ran
    assert single.status_code == 200, single.text
    (task,) = await open_tasks_of(client, patients[0])
    assert single.headers["Location"].endswith(task["basedOn"][0]["reference"])
    assert task["input"][0]["valueReference"] == {"reference": f"Subscription/{single.json()['id']}"}


async def test_a_staged_list_racing_a_staged_chunk_returns_its_follow_up(
    client: httpx.AsyncClient, drain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(4)]
    await stage_list(client, patients)
    ran = before_staged_key_read(monkeypatch, drain)

    others = [await push_patient(client) for _ in range(3)]
    second = await stage_list(client, [patients[0], *others])
    await drain()

    assert ran
    entry = second.json()["entry"][0]
    assert entry["response"]["status"] == "200 OK"
    (task,) = await open_tasks_of(client, patients[0])
    assert {"relation": "task", "url": f"Task/{task['id']}"} in entry["link"]
