"""The journal writer's group commit under steady load: rows that come while a batch is being
written wait for company, as the first ones did, instead of going at once in a small transaction
of their own (one more commit and WAL sync beside every burst of answers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from cht_interop.journal import store
from cht_interop.journal import writer as writer_module
from cht_interop.journal.entries import BodyPolicy, RequestDone, Row
from cht_interop.journal.writer import BATCH_TARGET, JournalWriter


class _Db:
    """Only what the writer uses: a write transaction."""

    @asynccontextmanager
    async def transaction(self, *, bulk: bool = False) -> AsyncIterator[None]:
        yield None


def _answered(n: int) -> RequestDone:
    return RequestDone(
        transaction_id=f"t-{n}",
        started_at=datetime.now(UTC),
        duration_ms=1.0,
        client="emr",
        method="POST",
        path="/mediator/service-request",
        query="",
        status=201,
        request_body=None,
        response_body=None,
        exchanges=[],
        properties={},
    )


async def _turns(n: int = 50) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) for ``condition``: a batch's rows are built in a worker thread, so real
    time passes before its write, and the writer's counters are plain numbers, no event."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 (plain counters, moved by the writer: no event to await)
            await asyncio.sleep(0.001)


def _held_journal(monkeypatch: pytest.MonkeyPatch) -> tuple[JournalWriter, list[int], asyncio.Event]:
    """A started journal whose writes record their sizes and then wait for ``hold``; it lingers
    so long that only a full batch or a flush writes."""
    monkeypatch.setattr(writer_module, "LINGER_SECONDS", 60.0)
    written: list[int] = []
    hold = asyncio.Event()

    async def insert_rows(conn: Any, rows: Sequence[Row]) -> None:
        written.append(len(rows))
        await hold.wait()

    monkeypatch.setattr(store, "insert_rows", insert_rows)
    journal = JournalWriter(_Db(), bodies=BodyPolicy(keep=False, max_chars=0), queue_max=10_000)  # type: ignore[arg-type]
    journal.start()
    return journal, written, hold


async def test_rows_that_come_during_a_write_wait_for_company(monkeypatch: pytest.MonkeyPatch) -> None:
    journal, written, hold = _held_journal(monkeypatch)
    try:
        for n in range(BATCH_TARGET):  # a full batch: written at once
            journal.submit(_answered(n))
        await _until(lambda: written == [BATCH_TARGET])

        for n in range(32):  # a burst of answers while that batch is being written
            journal.submit(_answered(BATCH_TARGET + n))
        hold.set()
        await _until(lambda: journal.written == BATCH_TARGET)  # that batch's write has ended
        await _turns()  # the writer's next steps, all on the loop
        assert written == [BATCH_TARGET], "the burst was written alone, without lingering"
        assert journal.depth == 32

        await asyncio.wait_for(journal.flush(), 5)
        assert written == [BATCH_TARGET, 32]
        assert journal.written == BATCH_TARGET + 32
    finally:
        await journal.stop()


async def test_a_backlog_is_written_without_lingering(monkeypatch: pytest.MonkeyPatch) -> None:
    journal, written, hold = _held_journal(monkeypatch)
    try:
        for n in range(BATCH_TARGET):
            journal.submit(_answered(n))
        await _until(lambda: written == [BATCH_TARGET])
        for n in range(BATCH_TARGET + 10):  # a full batch and more came meanwhile
            journal.submit(_answered(BATCH_TARGET + n))
        hold.set()
        await _until(lambda: len(written) == 2)  # lingering would take a minute
        assert written == [BATCH_TARGET, BATCH_TARGET + 10]
    finally:
        await journal.stop()


async def test_rows_are_built_off_the_event_loops_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long list's row shows its ~75 store calls: built on the loop, it held every client's
    request ~40 ms in one go."""
    import threading

    built_in: list[int] = []
    request_row = writer_module.request_row

    def noted(done: RequestDone, bodies: BodyPolicy) -> Row:
        built_in.append(threading.get_ident())
        return request_row(done, bodies)

    monkeypatch.setattr(writer_module, "request_row", noted)
    journal, written, hold = _held_journal(monkeypatch)
    hold.set()
    try:
        journal.submit(_answered(1))
        await asyncio.wait_for(journal.flush(), 5)
        assert written == [1]
        assert built_in and threading.get_ident() not in built_in
    finally:
        await journal.stop()
