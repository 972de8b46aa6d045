"""The journal's statements on both databases: a big batch (PostgreSQL's COPY path), keyset
paging through it, and the purge in chunks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cht_interop.db import Database
from cht_interop.journal import store
from cht_interop.journal.entries import BodyPolicy, RequestDone, request_row

START = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def done(i: int, *, status: int = 200) -> RequestDone:
    return RequestDone(
        transaction_id=f"tx-{i}",
        started_at=START + timedelta(milliseconds=i // 2),  # pairs share a time: the id breaks ties
        duration_ms=1.5,
        client="interop-client" if i % 3 else "other-client",
        method="GET",
        path=f"/fhir/Patient/{i}",
        query="",
        status=status,
        request_body=None,
        response_body=b'{"resourceType":"Patient","id":"%d"}' % i,
        exchanges=[],
        properties={"followUpId": f"fu-{i}", "taskId": str(i)},
    )


async def test_a_big_batch_pages_back_whole(db: Database) -> None:
    bodies = BodyPolicy(True, 100)
    rows = [request_row(done(i, status=404 if i % 10 == 0 else 200), bodies) for i in range(240)]
    async with db.transaction() as conn:
        await store.insert_rows(conn, rows)

    seen: list[store.Entry] = []
    cursor = None
    async with db.connect() as conn:
        while True:
            page = await store.list_entries(conn, after=cursor, limit=50)
            seen += page.entries
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        window = await store.list_entries(
            conn,
            store.Filters(since=START + timedelta(milliseconds=10), until=START + timedelta(milliseconds=20)),
        )
        errors = await store.list_entries(conn, store.Filters(status_class=4, client="interop-client"))
        one = await store.timeline(conn, "fu-7")
    assert len(seen) == 240 and len({e.id for e in seen}) == 240
    keys = [(e.started_at, e.id) for e in seen]
    assert keys == sorted(keys, reverse=True)
    assert seen[0].started_at.tzinfo is not None and seen[-1].started_at == START
    assert sorted(e.transaction_id for e in window.entries) == sorted(f"tx-{i}" for i in range(20, 40))
    assert sorted(e.path for e in errors.entries) == sorted(
        f"/fhir/Patient/{i}" for i in range(0, 240, 10) if i % 3
    )
    (entry,) = one.entries
    assert (entry.transaction_id, entry.response_body) == ("tx-7", '{"resourceType":"Patient","id":"7"}')
    assert entry.properties == {"followUpId": "fu-7", "taskId": "7"}


async def test_purge_goes_in_chunks(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "PURGE_CHUNK", 30)
    bodies = BodyPolicy(False, 0)
    async with db.transaction() as conn:
        await store.insert_rows(conn, [request_row(done(i), bodies) for i in range(100)])
    cut = START + timedelta(milliseconds=40)  # rows 0..79 are older
    deleted = []
    while True:
        async with db.transaction() as conn:
            n = await store.purge(conn, before=cut)
        deleted.append(n)
        if n < store.PURGE_CHUNK:
            break
    async with db.connect() as conn:
        left = await store.list_entries(conn, limit=500)
        gone = await store.timeline(conn, "fu-3")
    assert deleted == [30, 30, 20]
    assert sorted(e.transaction_id for e in left.entries) == sorted(f"tx-{i}" for i in range(80, 100))
    assert gone.entries == []
