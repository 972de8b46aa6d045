"""``JOURNAL_BODIES=false``: rows keep who, what, when and how it went, never a body."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cht_interop.journal.tables import journal_entries
from cht_interop.services import Services
from tests.journal.conftest import full, journal_rows
from tests.journal.test_requests import OPENHIM, register_with_secret_header
from tests.ltfu.conftest import push_patient, service_request_body
from tests.support.cht_double import ChtDouble


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"ALLOW_PRIVATE_CALLBACKS": True, "JOURNAL_BODIES": False}


async def test_body_logging_off_keeps_no_body(
    client: httpx.AsyncClient, services: Services, cht: ChtDouble, drain: Any
) -> None:
    await register_with_secret_header(client)
    patient = await push_patient(client)
    await client.post("/mediator/service-request", json=service_request_body(patient), headers=OPENHIM)
    await drain()  # the CHT submission: an orchestration, without its bodies
    rows = await journal_rows(services)
    assert {r.path for r in rows} >= {"/mediator/service-request", "cht.record"}
    for row in rows:
        entry = await full(services, row)
        assert entry.request_body is None
        assert entry.response_body is None or entry.kind == "job"  # a job's note, not a body
        for o in entry.orchestrations:
            assert o["request"]["body"] == "" and o["response"]["body"] == ""
    async with services.db.connect() as conn:
        everything = repr((await conn.execute(select(journal_entries))).all())
    assert patient not in everything.replace(f"'patientId': '{patient}'", "")
