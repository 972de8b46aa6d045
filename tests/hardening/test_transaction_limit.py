"""A client's transaction may hold at most ``FHIR_TRANSACTION_MAX_ENTRIES`` entries: beyond, a 413
OperationOutcome before anything is written. Unset, the limit is SQLite's default (its one writer is
held for the whole transaction while every other client's write waits); PostgreSQL has none."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest

from cht_interop.services import Services
from cht_interop.settings import SQLITE_TRANSACTION_MAX_ENTRIES
from tests.ltfu.conftest import patient_body

FHIR_JSON = {"content-type": "application/fhir+json"}


def bundle(kind: str, count: int) -> bytes:
    entries = [
        {"resource": patient_body(str(uuid.uuid4())), "request": {"method": "POST", "url": "Patient"}}
        for _ in range(count)
    ]
    return orjson.dumps({"resourceType": "Bundle", "type": kind, "entry": entries})


async def stored_patients(client: httpx.AsyncClient) -> int:
    res = await client.get("/fhir/Patient", params={"_summary": "count"})
    assert res.status_code == 200
    return int(res.json()["total"])


async def test_the_default_limit_is_sqlites_and_postgresql_has_none(
    client: httpx.AsyncClient, services: Services
) -> None:
    on_sqlite = services.settings.resolved_database_url.startswith("sqlite")
    over = SQLITE_TRANSACTION_MAX_ENTRIES + 1
    res = await client.post("/fhir", content=bundle("transaction", over), headers=FHIR_JSON)
    if on_sqlite:
        assert res.status_code == 413, res.text[:300]
        issue = res.json()["issue"][0]
        assert res.json()["resourceType"] == "OperationOutcome"
        assert issue["code"] == "too-costly"
        assert f"{over} entries" in issue["diagnostics"]
        assert f"at most {SQLITE_TRANSACTION_MAX_ENTRIES}" in issue["diagnostics"]
        assert await stored_patients(client) == 0
        res = await client.post(
            "/fhir", content=bundle("transaction", SQLITE_TRANSACTION_MAX_ENTRIES), headers=FHIR_JSON
        )
        assert res.status_code == 200, res.text[:300]
        assert await stored_patients(client) == SQLITE_TRANSACTION_MAX_ENTRIES
    else:
        assert res.status_code == 200, res.text[:300]
        assert await stored_patients(client) == over


class TestAConfiguredLimit:
    @pytest.fixture
    def setting_overrides(self) -> dict[str, Any]:
        return {"FHIR_TRANSACTION_MAX_ENTRIES": "3"}

    async def test_a_longer_transaction_is_refused_whole(self, client: httpx.AsyncClient) -> None:
        res = await client.post("/fhir", content=bundle("transaction", 4), headers=FHIR_JSON)
        assert res.status_code == 413
        assert "FHIR_TRANSACTION_MAX_ENTRIES" in res.json()["issue"][0]["diagnostics"]
        assert await stored_patients(client) == 0
        res = await client.post("/fhir", content=bundle("transaction", 3), headers=FHIR_JSON)
        assert res.status_code == 200
        assert await stored_patients(client) == 3

    async def test_a_batch_is_not_limited(self, client: httpx.AsyncClient) -> None:
        """Each batch entry is its own transaction: the writer is free between them."""
        res = await client.post("/fhir", content=bundle("batch", 5), headers=FHIR_JSON)
        assert res.status_code == 200
        assert [e["response"]["status"] for e in res.json()["entry"]] == ["201 Created"] * 5
        assert await stored_patients(client) == 5
