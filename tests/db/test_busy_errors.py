"""Which real driver errors count as "the database is busy, retry" (answered 503) and which do not."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from cht_interop.db import Database
from cht_interop.db.errors import is_database_busy


async def test_a_broken_statement_is_not_busy(db: Database) -> None:
    with pytest.raises(DBAPIError) as caught:
        async with db.transaction() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))
    assert not is_database_busy(caught.value)


@pytest.mark.postgres
async def test_a_connection_lost_mid_request_is_busy(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        with pytest.raises(DBAPIError) as caught:
            async with db.transaction() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
                await conn.execute(text("SELECT 1"))
        assert is_database_busy(caught.value)
        async with db.connect() as conn:  # the pool replaced the connection
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_a_serialization_failure_is_busy(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        with pytest.raises(DBAPIError) as caught:
            async with db.transaction() as conn:
                await conn.execute(text("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$"))
        assert is_database_busy(caught.value)
    finally:
        await db.dispose()
