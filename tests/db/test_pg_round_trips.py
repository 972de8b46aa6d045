"""PostgreSQL: what a pooled connection costs in round trips besides its own statements.

A single follow-up batch checks out ~5 connections (the start lock's transaction, the look-ups,
the FHIR transaction). Each checkout was pinged, and each read was wrapped in a BEGIN and a
ROLLBACK psycopg sent for it: 11 of the batch's ~26 round trips carried no statement of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from cht_interop.db import Database
from cht_interop.db import engine as db_engine

pytestmark = pytest.mark.postgres


@contextmanager
def sent() -> Iterator[list[str]]:
    """What this task sends to PostgreSQL: statements, and psycopg's own BEGIN/COMMIT/ROLLBACK."""
    seen: list[str] = []
    mine = asyncio.current_task()
    execute, command = psycopg.AsyncCursor.execute, psycopg.AsyncConnection._exec_command

    def executing(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if asyncio.current_task() is mine:
            seen.append(str(query).strip())
        return execute(self, query, *args, **kwargs)

    def commanding(self: Any, cmd: Any, *args: Any, **kwargs: Any) -> Any:
        if asyncio.current_task() is mine:
            seen.append(bytes(cmd).decode())
        return command(self, cmd, *args, **kwargs)

    psycopg.AsyncCursor.execute = executing  # type: ignore[method-assign]
    psycopg.AsyncConnection._exec_command = commanding  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]
        psycopg.AsyncConnection._exec_command = command  # type: ignore[method-assign]


async def test_a_read_sends_its_statement_alone(pg_url: str) -> None:
    """A read on a connection used moments ago: no ping, no BEGIN, no ROLLBACK."""
    db = Database(pg_url)
    try:
        async with db.connect() as conn:  # the pool's first connection: opened here
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        with sent() as seen:
            async with db.connect() as conn:
                assert (await conn.execute(text("SELECT 2"))).scalar() == 2
        assert seen == ["SELECT 2"]
    finally:
        await db.dispose()


async def test_a_transaction_on_a_connection_used_moments_ago_is_not_pinged(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        async with db.connect() as conn:
            await conn.execute(text("SELECT 1"))
        with sent() as seen:
            async with db.transaction() as conn:
                await conn.execute(text("SELECT 3"))
        # (psycopg sends its BEGIN from inside the first statement's execute)
        assert sorted(s.split()[0] for s in seen) == ["BEGIN", "COMMIT", "SELECT"]
    finally:
        await db.dispose()


async def test_reads_see_what_others_committed_meanwhile(pg_url: str) -> None:
    """Autocommit reads: each statement its own snapshot, as READ COMMITTED gave them."""
    db = Database(pg_url)
    table = "singles2_reads_probe"
    try:
        async with db.transaction() as conn:
            await conn.execute(text(f"CREATE TABLE {table} (v INTEGER)"))
        async with db.connect() as reader:
            assert (await reader.execute(text(f"SELECT count(*) FROM {table}"))).scalar() == 0
            async with db.transaction() as writer:
                await writer.execute(text(f"INSERT INTO {table} VALUES (1)"))
            assert (await reader.execute(text(f"SELECT count(*) FROM {table}"))).scalar() == 1
        async with db.transaction() as conn:  # a write still is one transaction: all or nothing
            await conn.execute(text(f"INSERT INTO {table} VALUES (2)"))
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute(text(f"INSERT INTO {table} VALUES (3)"))
                raise RuntimeError("abandoned")
        async with db.connect() as reader:
            values = (await reader.execute(text(f"SELECT v FROM {table} ORDER BY v"))).scalars().all()
        assert values == [1, 2]
    finally:
        async with db.transaction() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await db.dispose()


async def test_a_pooled_connection_that_died_while_idle_is_replaced_at_checkout(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle past ``PING_AFTER_IDLE_SECONDS``, a connection is pinged: one whose server process
    was terminated meanwhile is replaced, and the caller never sees it."""
    monkeypatch.setattr(db_engine, "PING_AFTER_IDLE_SECONDS", 0.05, raising=False)
    db = Database(pg_url)
    try:
        async with db.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await asyncio.sleep(0.2)
        async with db.connect() as conn:
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar() != pid
    finally:
        await db.dispose()
