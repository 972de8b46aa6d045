"""A transaction reads its match URLs and rows (on PostgreSQL, takes their locks) all at once.

A group-committed batch of CHT reports is one transaction of conditional PUTs (the Encounters) and
PUTs by id (their Tasks and ServiceRequests). Entry by entry, each cost its own round trips (the
match URL's lock, its search, the row's FOR UPDATE): a batch was a chain of ~4 round trips per
report, and a process writing one batch at a time was bound by that chain, not by its CPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg

from cht_interop.fhir.store import FhirStore
from tests.fhir.conftest import patient


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL statements this task sends to PostgreSQL (SQLAlchemy's and the driver-level ones
    both go through psycopg's cursor; a COPY is one)."""
    seen: list[str] = []
    mine = asyncio.current_task()
    originals = {name: getattr(psycopg.AsyncCursor, name) for name in ("execute", "executemany", "copy")}

    def counting(name: str) -> Any:
        original = originals[name]

        def run(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if asyncio.current_task() is mine:
                seen.append(str(query))
            return original(self, query, *args, **kwargs)  # a coroutine, or COPY's context

        return run

    for name in originals:
        setattr(psycopg.AsyncCursor, name, counting(name))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(psycopg.AsyncCursor, name, original)


def _put(resource: dict[str, Any], url: str, **request: Any) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "PUT", "url": url, **request}}


async def _reports_like(store: FhirStore, tag: str, n: int) -> dict[str, Any]:
    """A transaction shaped like a batch of ``n`` reports: per report, a conditional PUT that
    matches (a resent report), one that creates, and a PUT by id of a resource read earlier."""
    entries = []
    for i in range(n):
        matched = await store.create(patient(f"{tag}-m{i}"))
        by_id = await store.create(patient(f"{tag}-p{i}"))
        entries.append(_put(patient(f"{tag}-m{i}", gender="male"), f"Patient?identifier=cht|{tag}-m{i}"))
        entries.append(_put(patient(f"{tag}-c{i}"), f"Patient?identifier=cht|{tag}-c{i}"))
        version = by_id.stored.version_id
        changed = {**patient(f"{tag}-p{i}", gender="male"), "id": by_id.stored.id}
        entries.append(_put(changed, f"Patient/{by_id.stored.id}", ifMatch=f'W/"{version}"'))
        assert matched.created
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def test_a_transaction_sends_as_many_statements_for_many_conditional_entries_as_for_few(
    store: FhirStore,
) -> None:
    """PostgreSQL: each statement is a round trip; SQLite: a hop to aiosqlite's thread and back
    (CPU on both sides). Entry by entry, each report added its lock, its search and its row's read
    (FOR UPDATE on PostgreSQL); a batch now takes them in one statement each."""
    counting = statements if store.db.is_postgresql else sqlite_statements
    counted = {}
    for n in (2, 6):
        bundle = await _reports_like(store, f"n{n}", n)
        with counting() as seen:
            answer = await store.process_bundle(bundle)
        statuses = [e["response"]["status"] for e in answer["entry"]]
        assert statuses == ["200 OK", "201 Created", "200 OK"] * n
        counted[n] = len(seen)
    assert counted[6] == counted[2], counted


async def test_a_resource_deleted_earlier_in_the_transaction_is_not_matched_nor_updated_as_it_was(
    store: FhirStore, client: httpx.AsyncClient
) -> None:
    """What was locked and searched ahead (PostgreSQL) does not hide the transaction's own delete;
    SQLite, entry by entry, answers the same."""
    gone = await store.create(patient("gone"))
    kept = await store.create(patient("kept"))
    kept_id = kept.stored.id
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Patient/{gone.stored.id}"}},
            {"request": {"method": "DELETE", "url": f"Patient/{kept_id}"}},
            _put(patient("gone", gender="male"), "Patient?identifier=cht|gone"),
            _put({**patient("kept", gender="male"), "id": kept_id}, f"Patient/{kept_id}"),
        ],
    }
    answer = await store.process_bundle(bundle)
    statuses = [e["response"]["status"] for e in answer["entry"]]
    # the conditional PUT found nothing (a new Patient); the PUT by id brought the deleted one back
    assert statuses[2:] == ["201 Created", "201 Created"], statuses
    assert (await client.get(f"/fhir/Patient/{gone.stored.id}")).status_code == 410
    back = (await client.get(f"/fhir/Patient/{kept_id}")).json()
    assert (back["gender"], back["meta"]["versionId"]) == ("male", "3")


@contextmanager
def sqlite_statements() -> Iterator[list[str]]:
    """The SQL statements this task hands to aiosqlite's thread (each call is one hop to it)."""
    import aiosqlite

    seen: list[str] = []
    mine = asyncio.current_task()
    targets = [(aiosqlite.Connection, n) for n in ("execute", "executemany", "execute_fetchall")]
    targets += [(aiosqlite.Cursor, n) for n in ("execute", "executemany")]
    originals = {(cls, name): getattr(cls, name) for cls, name in targets}

    def counting(original: Any) -> Any:
        def run(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
            if asyncio.current_task() is mine:
                seen.append(sql)
            return original(self, sql, *args, **kwargs)

        return run

    for (cls, name), original in originals.items():
        setattr(cls, name, counting(original))
    try:
        yield seen
    finally:
        for (cls, name), original in originals.items():
            setattr(cls, name, original)
