"""Hot write paths on the raw driver connection: SQL text built once, rows as tuples.

Measured on the shared 2-core box: one statement through SQLAlchemy's async adaptation costs
~380 µs on aiosqlite (a cursor, execute, fetch and close, each a hop into the driver's thread) and
~230 µs on psycopg, against ~55 µs and ~140 µs on the driver itself; and Core binds every row as a
dict through per-column processors (~10 µs a row; a 30,000-resource Bundle writes ~320,000 index
rows). So the FHIR store's write path and the outbox's enqueue send their statements to the
driver of their ``AsyncConnection``, inside the transaction SQLAlchemy opened (same connection,
so same transaction). Reads and rare writes stay Core. Driver errors are re-raised as
SQLAlchemy's (``IntegrityError`` …), as Core would.

Statements are written with ``?`` markers, translated for psycopg (``%s``); none has a literal
``?`` or ``%``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db.aiosqlite_compat import executemany_each

Row = tuple[Any, ...]
InsertBatch = tuple[str, tuple[str, ...], Sequence[Row]]  # table, columns, rows
# PostgreSQL: up to this many rows in one multi-row INSERT, more through COPY (one round trip
# for the statement, then streamed rows: ~30x cheaper than INSERT for 50,000 rows, measured)
_PG_COPY_FROM = 50


def markers(n: int) -> str:
    """``?, ?, ?`` for ``n`` values."""
    return ", ".join("?" * n)


@lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


@lru_cache(maxsize=256)
def _insert_sql(table: str, columns: tuple[str, ...], rows: int) -> str:
    one = f"({markers(len(columns))})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * rows)}"


class Driver:
    """The driver connection (aiosqlite or psycopg) under one SQLAlchemy ``AsyncConnection``."""

    def __init__(self, raw: Any, sqlite: bool, dbapi: Any) -> None:
        self.raw = raw
        self.sqlite = sqlite
        self._error: type[Exception] = dbapi.Error

    @classmethod
    async def of(cls, conn: AsyncConnection) -> Driver:
        proxied = await conn.get_raw_connection()
        return cls(proxied.driver_connection, conn.dialect.name == "sqlite", conn.dialect.loaded_dbapi)

    def _wrap(self, exc: Exception, sql: str, params: Any) -> StatementError:
        return DBAPIError.instance(sql, params, exc, self._error)

    async def fetchall(self, sql: str, params: Row = ()) -> list[Row]:
        """Rows of one statement (a SELECT, or a write with RETURNING)."""
        try:
            if self.sqlite:
                return [tuple(r) for r in await self.raw.execute_fetchall(sql, params)]
            cursor = await self.raw.execute(_pg(sql), params)
            return list(await cursor.fetchall())
        except self._error as exc:
            raise self._wrap(exc, sql, params) from exc

    async def execute(self, sql: str, params: Row = ()) -> None:
        """One statement whose rows, if any, are not wanted."""
        try:
            if self.sqlite:
                await self.raw.execute_fetchall(sql, params)
            else:
                await self.raw.execute(_pg(sql), params)
        except self._error as exc:
            raise self._wrap(exc, sql, params) from exc

    async def executemany(self, sql: str, rows: Sequence[Row]) -> None:
        """One statement run for every row (SQLite: one call into the driver's thread)."""
        if not rows:
            return
        try:
            if self.sqlite:
                await self.raw.executemany(sql, rows)
                return
            async with self.raw.cursor() as cursor:
                await cursor.executemany(_pg(sql), rows)
        except self._error as exc:
            raise self._wrap(exc, sql, rows[0]) from exc

    async def insert(self, table: str, columns: tuple[str, ...], rows: Sequence[Row]) -> None:
        """INSERT ``rows`` (tuples in ``columns`` order) into ``table``."""
        await self.insert_many([(table, columns, rows)])

    async def insert_many(self, batches: Sequence[InsertBatch]) -> None:
        """Several INSERTs of (table, columns, rows), for tables that do not depend on each other
        (no foreign keys between them: PostgreSQL sends the small ones first). SQLite: one
        executemany each, all in one call into aiosqlite's thread (``aiosqlite_compat``: a call
        costs ~75 µs here, and aiosqlite has no public way to send several). PostgreSQL: a
        multi-row INSERT each, sent in one pipeline (one round trip), or COPY for more rows."""
        batches = [b for b in batches if b[2]]
        if not batches:
            return
        try:
            if self.sqlite:
                await self._sqlite_insert_many(batches)
                return
            small = [b for b in batches if len(b[2]) <= _PG_COPY_FROM]
            if small:
                async with self.raw.pipeline():
                    for table, columns, rows in small:
                        params = [value for row in rows for value in row]
                        await self.raw.execute(_pg(_insert_sql(table, columns, len(rows))), params)
            for table, columns, rows in batches:
                if len(rows) > _PG_COPY_FROM:
                    copy_sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
                    async with self.raw.cursor() as cursor, cursor.copy(copy_sql) as copy:
                        for row in rows:
                            await copy.write_row(row)
        except self._error as exc:
            raise self._wrap(exc, f"INSERT INTO {batches[0][0]}", batches[0][2][0]) from exc

    async def _sqlite_insert_many(self, batches: Sequence[InsertBatch]) -> None:
        statements = [(_insert_sql(table, columns, 1), rows) for table, columns, rows in batches]
        await executemany_each(self.raw, statements)
