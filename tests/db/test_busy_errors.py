"""Which real driver errors count as "the database is busy, retry" (answered 503) and which do not."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from cht_interop.db import Database, errors
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


def test_start_up_waits_back_off_and_end_within_the_start_up_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "STARTUP_WAIT_SECONDS", 20.0)
    delays = list(errors.startup_retry_delays())
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 5.0
    assert sum(delays) <= 20.0 < sum(delays) + 5.0


async def test_a_start_up_step_is_tried_again_while_the_database_is_busy_then_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(errors, "startup_retry_delays", lambda: iter([0.0, 0.0, 0.0]))
    tries: list[int] = []

    async def step() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "answered"

    assert await errors.when_database_answers(step, "a step") == "answered"
    assert len(tries) == 3


async def test_a_start_up_step_gives_up_when_the_wait_is_over_or_the_error_is_not_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(errors, "startup_retry_delays", lambda: iter([0.0]))

    async def busy() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError):
        await errors.when_database_answers(busy, "a step")

    async def broken() -> None:
        raise ValueError("not a database error")

    with pytest.raises(ValueError):
        await errors.when_database_answers(broken, "a step")


def test_sqlite_errors_are_told_apart_without_loading_psycopg() -> None:
    """psycopg (~9 MiB resident) stays out of a process on SQLite: no psycopg error without it."""
    program = (
        "import sqlite3, sys\n"
        "from cht_interop.db.errors import is_database_busy\n"
        "assert is_database_busy(sqlite3.OperationalError('database is locked'))\n"
        "assert not is_database_busy(ValueError('no'))\n"
        "print('psycopg' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_servers_code_does_not_load_psycopg_on_its_own() -> None:
    """Everything ``up`` imports to serve on SQLite leaves psycopg out; only the PostgreSQL paths
    (the engine's driver, the outbox's LISTEN) load it, when they run."""
    program = (
        "import sys\n"
        "import cht_interop.app, cht_interop.runner, cht_interop.services, cht_interop.delivery.worker\n"
        "print('psycopg' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
