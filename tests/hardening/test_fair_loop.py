"""A big write does not starve the others: ``/health/live`` keeps answering while a 20,000-entry
transaction is validated and while its resources are staged (it used to get no answer during
either: one loop over all entries without a pause). The latency targets are bench/fair_loop.py's;
this test counts where in the write the answers came, which timing cannot flake: at each answer
it notes how many entries had been validated and staged so far."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest

from cht_interop.fhir import bundles
from cht_interop.fhir.session import WriteSession
from tests.ltfu.conftest import patient_body

ENTRIES = 20_000


@pytest.fixture
def setting_overrides() -> dict[str, Any]:
    # above SQLite's default transaction limit: an operator may raise it, and the loop stays fair
    return {"FHIR_TRANSACTION_MAX_ENTRIES": "0"}


async def test_health_answers_during_a_big_transaction(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = {"validated": 0, "staged": 0}
    check_resource, create = bundles.check_resource, WriteSession.create

    def counted_check(*args: Any, **kwargs: Any) -> Any:
        progress["validated"] += 1
        return check_resource(*args, **kwargs)

    async def counted_create(self: WriteSession, *args: Any, **kwargs: Any) -> Any:
        progress["staged"] += 1
        return await create(self, *args, **kwargs)

    monkeypatch.setattr(bundles, "check_resource", counted_check)
    monkeypatch.setattr(WriteSession, "create", counted_create)
    entries = [
        {"resource": patient_body(str(uuid.uuid4())), "request": {"method": "POST", "url": "Patient"}}
        for _ in range(ENTRIES)
    ]
    body = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    seen: list[tuple[int, int]] = []  # (validated, staged) at each answer
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            res = await client.get("/health/live")
            assert res.status_code == 200
            seen.append((progress["validated"], progress["staged"]))
            await asyncio.sleep(0.01)

    prober = asyncio.create_task(probe())
    res = await client.post("/fhir", content=body, headers={"content-type": "application/fhir+json"})
    done.set()
    await prober
    assert res.status_code == 200, res.text[:300]
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["201 Created"] * ENTRIES
    assert progress == {"validated": ENTRIES, "staged": ENTRIES}
    during_validation = {v for v, _s in seen if 0 < v < ENTRIES}
    during_staging = {s for _v, s in seen if 0 < s < ENTRIES}
    assert len(during_validation) >= 5, sorted(during_validation)
    assert len(during_staging) >= 5, sorted(during_staging)
