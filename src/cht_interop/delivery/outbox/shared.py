"""What every outbox statement uses: the clock, stored text's size limit, status literals, and the
claimed ``Job`` made from a row."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, ColumnElement, Dialect, String, literal_column
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.delivery.registry import Job
from cht_interop.delivery.tables import HOOK_STATUSES, JOB_STATUSES

MAX_TEXT = 2000
ACTIVE = ("pending", "running")
# set on a connection by enqueue(); the worker's commit hook wakes it when that transaction commits
ENQUEUED_FLAG = "cht_interop.outbox.enqueued"
# PostgreSQL: enqueue NOTIFYs here, at commit, for workers in other processes (``worker.wakeups``)
OUTBOX_CHANNEL = "cht_interop_outbox"


async def mark_enqueued(conn: AsyncConnection) -> None:
    """Jobs were added in ``conn``'s transaction: this process's workers wake at its commit (the
    flag), other processes' too (PostgreSQL: a NOTIFY, delivered at commit; SQLite's watchers see
    the commit itself)."""
    conn.info[ENQUEUED_FLAG] = True
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(f"NOTIFY {OUTBOX_CHANNEL}")


def utcnow() -> datetime:
    return datetime.now(UTC)


def clip(text: str | None, limit: int = MAX_TEXT) -> str | None:
    """Cut stored text to about 2 kB so a chatty peer cannot bloat the table."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def inline_status(status: str) -> ColumnElement[str]:
    """A status written into the SQL text, not bound: SQLite uses a partial index only when the
    query's WHERE literally implies the index's WHERE, which a bound parameter never does."""
    assert status in JOB_STATUSES or status in HOOK_STATUSES
    return literal_column(f"'{status}'", String())


def job_from_row(row: Any, *, attempts_before: int) -> Job:
    return Job(
        id=int(row.id),
        kind=row.kind,
        target=row.target,
        payload=dict(row.payload or {}),
        ordering_key=row.ordering_key,
        attempts=attempts_before,
        created_at=row.created_at,
        notification_id=row.notification_id,
    )


def bind(column: Column[Any], dialect: Dialect) -> Callable[[Any], Any]:
    """The column type's bind processing on ``dialect`` (identity when it has none): what Core
    would send, for statements sent on the driver (``cht_interop.db.driver``). None stays None."""
    processor = column.type.dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)


def result(column: Column[Any], dialect: Dialect) -> Callable[[Any], Any]:
    """The column type's result processing on ``dialect`` (identity when it has none)."""
    processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
    return processor or (lambda value: value)
