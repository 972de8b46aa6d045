"""What a long LTFU list keeps alive while it is staged: what its follow-ups need, not whole
resources it read on the way (``up``'s resident set peaks while a list is staged)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.fhir.client import Resource, SearchParams
from cht_interop.ltfu import lists as L
from cht_interop.services import Services
from tests.ltfu.conftest import push_patient, register_requester, service_request_body


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"LTFU_LIST_SYNC_MAX": 3}  # lists of more than 3 entries are staged


class Alive:
    """Counts the resources carrying one of these that are still alive."""

    count = 0

    def __init__(self) -> None:
        Alive.count += 1

    def __del__(self) -> None:
        Alive.count -= 1


def count_alive_when_staged(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``Alive.count`` as each list's staging transaction writes its rows (one figure per turn)."""
    alive_when_staged: list[int] = []
    stage_rows = L.stage_rows

    async def staged(conn: AsyncConnection, rows: L.Staging) -> None:
        alive_when_staged.append(Alive.count)
        await stage_rows(conn, rows)

    monkeypatch.setattr(L, "stage_rows", staged)
    return alive_when_staged


async def test_a_staged_lists_patients_are_not_kept_whole_while_it_stages(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Patient the list names is read from the FHIR store (a whole resource: names, addresses,
    telecoms, meta); none of them is still alive when the list's staged rows are written, and the
    list is answered and staged as before."""
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(5)]
    fhir = services.ltfu.patients.fhir
    search_all = fhir.search_all

    async def marked(resource_type: str, params: SearchParams = ()) -> list[Resource]:
        found = await search_all(resource_type, params)
        for resource in found:
            if resource.get("resourceType") == "Patient":
                resource["_alive"] = Alive()
        return found

    alive_when_staged = count_alive_when_staged(monkeypatch)
    monkeypatch.setattr(fhir, "search_all", marked)
    Alive.count = 0
    res = await client.post(
        "/mediator/service-request",
        json={
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"resource": service_request_body(p)} for p in patients],
        },
    )
    assert res.status_code == 202, res.text
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["202 Accepted"] * 5
    assert alive_when_staged == [0]


async def test_a_staged_lists_entries_are_freed_once_checked(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is kept of each entry is its checked request: the entries themselves (the client's
    Bundle) are gone before the list looks its patients up and stages."""
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(5)]
    alive_when_staged = count_alive_when_staged(monkeypatch)
    Alive.count = 0
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": service_request_body(p), "note": Alive()} for p in patients],
    }
    answer = await services.ltfu.intake.request_follow_up_list(bundle)
    assert answer.status == 202
    assert [e["response"]["status"] for e in answer.bundle["entry"]] == ["202 Accepted"] * 5
    assert alive_when_staged == [0]


async def test_a_staged_lists_rows_are_built_before_its_transaction_and_only_they_kept(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging transaction holds the rows as they are inserted; the entries they were built
    from (each with its request to write later) are gone when it writes."""
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(5)]
    staging = L.staging

    def marked(list_id: str, entries: Sequence[L.EntryRow], keys: Iterable[tuple[str, str]]) -> L.Staging:
        rows = staging(list_id, entries, keys)
        for entry in entries:  # once written out: what stays alive of an entry row from now on
            if entry.request is not None:
                entry.request["_alive"] = Alive()
        return rows

    alive_when_staged = count_alive_when_staged(monkeypatch)
    monkeypatch.setattr(L, "staging", marked)
    Alive.count = 0
    entries = [{"resource": service_request_body(p)} for p in patients]
    res = await client.post(
        "/mediator/service-request", json={"resourceType": "Bundle", "type": "batch", "entry": entries}
    )
    assert res.status_code == 202, res.text
    assert alive_when_staged == [0]
