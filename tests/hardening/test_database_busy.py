"""A busy database is a 503, not a 500: another process holds SQLite's write lock (PostgreSQL: an
exclusive lock on the tables) past the busy timeout, and every writing route answers 503 +
Retry-After + a ``transient`` OperationOutcome, writes nothing, and the same request succeeds once
the lock is released."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from cht_interop.db import metadata
from cht_interop.journal.tables import journal_entries
from cht_interop.services import Services
from tests.console.conftest import admin, browser, csrf_of, with_admin  # noqa: F401
from tests.hardening.conftest import row_counts
from tests.ltfu.conftest import (  # noqa: F401
    app,
    cht_server,
    client,
    patient_body,
    register_requester,
    service_request_body,
    services,
)

BUSY_TIMEOUT = 0.3  # seconds: the test waits this long per refused request


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"DB_BUSY_TIMEOUT_SECONDS": BUSY_TIMEOUT}


@contextmanager
def write_lock_held(of: Services) -> Iterator[None]:
    """Another connection (what a second ``serve`` or a CLI command would be) holds the write lock."""
    url = make_url(of.db.url)
    if of.db.is_sqlite:
        other = sqlite3.connect(url.database or "", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            yield
            other.execute("ROLLBACK")
        finally:
            other.close()
        return
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as pg:  # one transaction, rolled back when the block ends
        tables = ", ".join(t.name for t in metadata.sorted_tables if not t.name.startswith("journal_"))
        pg.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")  # reads go on, writes wait
        yield
        pg.rollback()


def assert_busy(res: httpx.Response) -> None:
    assert res.status_code == 503, (res.status_code, res.text[:500])
    assert int(res.headers["retry-after"]) > 0
    body = res.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "transient", body


async def test_fhir_and_mediator_writes_are_503_while_another_process_writes(
    client: httpx.AsyncClient,  # noqa: F811
    services: Services,  # noqa: F811
) -> None:
    org = await register_requester(client)
    cht_id = str(uuid.uuid4())
    assert (await client.post("/mediator/patient", json=patient_body(cht_id))).status_code in (200, 201)
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient_body(), "request": {"method": "POST", "url": "Patient"}} for _ in range(3)
        ],
    }
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/fhir/Patient", patient_body()),
        ("/fhir", transaction),
        ("/mediator/patient", patient_body()),
        ("/mediator/service-request", service_request_body(cht_id, org)),
    ]
    before = await data_rows(services)
    with write_lock_held(services):
        for path, body in requests:
            assert_busy(await client.post(path, json=body))
        assert (await client.get("/health/live")).status_code == 200  # reads and health go on
        assert (await client.get("/fhir/Patient", params={"_count": "1"})).status_code == 200
    assert await data_rows(services) == before  # nothing half-written
    for path, body in requests:  # the same requests, now that the writer is gone
        res = await client.post(path, json=body)
        assert res.status_code in (200, 201), (path, res.text[:500])
    # the refused requests are in the transaction log too (its writer waited for the database)
    assert services.journal is not None
    await asyncio.wait_for(services.journal.flush(), timeout=30)
    async with services.db.connect() as conn:
        refused = await conn.execute(select(journal_entries.c.path).where(journal_entries.c.status == 503))
        assert sorted(refused.scalars()) == sorted(path for path, _ in requests)
    assert services.journal.dropped == 0


async def data_rows(of: Services) -> dict[str, int]:
    """Row counts but the transaction log's (which journals the refused requests themselves)."""
    return {k: v for k, v in (await row_counts(of)).items() if not k.startswith("journal_")}


async def test_a_console_form_is_a_503_page_while_another_process_writes(
    admin: httpx.AsyncClient,  # noqa: F811
    services: Services,  # noqa: F811
) -> None:
    page = await admin.get("/console/clients")
    form = {"csrf": csrf_of(page), "client_id": "emr-9", "name": "EMR 9",
            "password": "Emr-9-password-x", "roles": ["requester"]}  # fmt: skip
    before = await data_rows(services)
    with write_lock_held(services):
        res = await admin.post("/console/clients", data=form)
        assert res.status_code == 503, res.text[:500]
        assert int(res.headers["retry-after"]) > 0
        assert "nothing was saved" in res.text
    assert await data_rows(services) == before
    assert (await admin.post("/console/clients", data=form)).status_code == 303


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL: no single writer
async def test_a_write_queued_behind_this_process_s_writer_past_the_timeout_is_503(
    client: httpx.AsyncClient,  # noqa: F811
    services: Services,  # noqa: F811
) -> None:
    """SQLite's writers of one process queue in the process (no busy-handler sleeps): a request
    queued there longer than the busy timeout is answered as one refused by SQLite itself, and
    the queue moves on as soon as the writer commits."""
    await register_requester(client)
    cht_id = str(uuid.uuid4())
    before = await data_rows(services)
    release = asyncio.Event()

    async def long_writer() -> None:
        async with services.db.transaction():
            await release.wait()

    holder = asyncio.create_task(long_writer())
    await asyncio.sleep(0.05)
    res = await client.post("/mediator/patient", json=patient_body(cht_id))
    assert_busy(res)
    assert await data_rows(services) == before
    release.set()
    await holder
    assert (await client.post("/mediator/patient", json=patient_body(cht_id))).status_code == 201
