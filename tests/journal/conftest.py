"""The real app (embedded FHIR store, outbox, journal) with the CHT double and a callback receiver
on loopback ports; helpers to read the journal as the console will."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cht_interop.journal import store
from cht_interop.services import Services

# the LTFU tests' app, client, CHT double and drain, shared as they are
from tests.ltfu.conftest import app, cht, cht_server, client, drain, services  # noqa: F401
from tests.support.live import serve_in_thread
from tests.support.receiver import CallbackReceiver


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"ALLOW_PRIVATE_CALLBACKS": True}


@pytest.fixture
def receiver() -> Iterator[tuple[CallbackReceiver, str]]:
    r = CallbackReceiver()
    with serve_in_thread(r.app()) as url:
        yield r, url


async def journal_rows(of: Services, filters: store.Filters | None = None) -> list[store.Entry]:
    """Every row written so far (after the writer's queue has been flushed), newest first."""
    assert of.journal is not None
    await of.journal.flush()
    async with of.db.connect() as conn:
        page = await store.list_entries(conn, filters, limit=500)
    return page.entries


async def full(of: Services, entry: store.Entry) -> store.Entry:
    async with of.db.connect() as conn:
        found = await store.get_entry(conn, entry.id)
    assert found is not None
    return found
