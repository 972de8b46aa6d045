"""Which database errors mean "busy now, try again" rather than "broken".

A write that waits past SQLite's busy timeout (another process holds the write lock: a second
``serve``, a ``worker``, a CLI command, one big transaction), or PostgreSQL's serialization
failures, deadlocks, lock and statement timeouts and lost connections, left nothing written
(its transaction rolled back) and will likely succeed in a moment. The HTTP layers answer those
503 with ``Retry-After`` instead of a 500, and say so in one place (``app.answer_for``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# Retry-After on a 503 for a busy database: long enough for a typical writer to finish
RETRY_AFTER_SECONDS = 2
# A process starting while its database cannot answer (a stack coming up, PostgreSQL restarting)
# waits this long for it in all, between its tries, before it gives up
STARTUP_WAIT_SECONDS = 60.0

T = TypeVar("T")
log = logging.getLogger(__name__)


def startup_retry_delays() -> Iterator[float]:
    """The waits between the tries of a start-up step: 0.5 s, doubling up to 5 s, adding up to at
    most ``STARTUP_WAIT_SECONDS`` (one schedule for the sync ``migrate`` and the async steps)."""
    waited = 0.0
    delay = 0.5
    while waited + delay <= STARTUP_WAIT_SECONDS:
        yield delay
        waited += delay
        delay = min(5.0, delay * 2)


async def when_database_answers(step: Callable[[], Awaitable[T]], what: str) -> T:
    """``step()``, tried again while the database is busy or unreachable (``startup_retry_delays``):
    a start-up step must not kill the process for a database restart."""
    delays = startup_retry_delays()
    while True:
        try:
            return await step()
        except Exception as exc:
            delay = next(delays, None)
            if not is_database_busy(exc) or delay is None:
                raise
            log.warning("%s: the database cannot answer yet (%s); trying again in %.1f s", what, exc, delay)
        await asyncio.sleep(delay)


# SQLite's primary result codes for "the database / a table is locked" (extended codes keep them
# in the low byte)
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
# PostgreSQL SQLSTATEs: serialization_failure, deadlock_detected, lock_not_available,
# query_canceled (statement/lock timeout), admin_shutdown, crash_shutdown, cannot_connect_now,
# too_many_connections; and the whole class 08 (connection exception)
_PG_TRANSIENT = {"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "53300"}


def is_database_busy(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) says the database was busy or briefly unreachable."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if _transient(err):
            return True
        if isinstance(err, BaseExceptionGroup):
            todo.extend(err.exceptions)
        for inner in (err.__cause__, err.__context__, getattr(err, "orig", None)):
            if isinstance(inner, BaseException):
                todo.append(inner)
    return False


def _transient(err: BaseException) -> bool:
    if isinstance(err, PoolTimeout):
        return True  # every pooled connection busy for pool_timeout
    if isinstance(err, DBAPIError) and err.connection_invalidated:
        return True  # the connection was lost mid-request (the pool replaces it)
    if isinstance(err, sqlite3.OperationalError):
        code = getattr(err, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
        return "locked" in str(err) or "busy" in str(err)
    return _pg_transient(err)


def _pg_transient(err: BaseException) -> bool:
    # no psycopg error without psycopg loaded: on SQLite it never is (~9 MiB of a server's memory)
    if "psycopg" not in sys.modules:
        return False
    import psycopg

    if isinstance(err, psycopg.Error) and err.sqlstate is not None:
        return err.sqlstate in _PG_TRANSIENT or err.sqlstate.startswith("08")
    # psycopg's errors without a SQLSTATE: the server went away (no answer to carry one)
    return isinstance(err, (psycopg.OperationalError, psycopg.InterfaceError))
