"""The async engine and the single place that owns transactions.

SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for every transaction so two writers queue
instead of failing on lock upgrade. PostgreSQL: psycopg 3 (async), READ COMMITTED, a lock timeout
equal to SQLite's busy timeout. Either past its timeout: a 503 (``db/errors.py``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolResetState

from cht_interop.db.checkpoints import WalCheckpointer
from cht_interop.db.driver import Driver
from cht_interop.db.writers import WriterQueue
from cht_interop.kit.arenas import limit_malloc_arenas

log = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    """Map a user-facing URL (``sqlite:///x``, ``postgresql://…``) to our async driver."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return u.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if u.get_backend_name() == "postgresql":
        return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database URL scheme: {u.drivername!r} (use sqlite or postgresql)")


def sqlite_file(url: str) -> Path | None:
    """The SQLite database file of ``url`` (None: PostgreSQL, or SQLite in memory)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database).resolve()


def sync_url(url: str) -> str:
    """The same database through a sync driver (Alembic runs sync)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return u.set(drivername="sqlite").render_as_string(hide_password=False)
    return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, *, busy_timeout_ms: int) -> None:
    # Take over transaction control so that `begin` below can say BEGIN IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is synced at every commit, so a follow-up answered 201 survives a power cut too
    # (NORMAL only survives a crash of the process; the CHT's sites lose power). Group commit
    # shares one sync among a batch: single requests ~7% slower in-process on the shared box.
    cursor.execute("PRAGMA synchronous=FULL")
    # Checkpoints run in a thread of their own in the processes that serve writes
    # (``checkpoints.py``), not inside a writer's commit; this is the backstop, 4x the interval a
    # commit used to checkpoint at (4,000 pages: it stalled every other writer while it copied).
    cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_CHECKPOINT_PAGES}")
    # How long a write waits for another process's write lock before giving up ("database is
    # locked", answered 503 + Retry-After: db/errors.py)
    cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # The FHIR indexes take random keys (UUID identifiers), so writes touch pages all over them:
    # with SQLite's default 2 MB page cache, per-write cost grew with the database. A bigger
    # cache per connection keeps it flat.
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    # ... but all the connections' caches together stay under one process-wide budget: past it
    # SQLite recycles its least recently used clean pages instead of allocating (each pooled
    # connection's cache grew towards its 16 MiB and stayed there, up to 15 connections; with
    # this and kit/arenas.py, ``up`` holding 20,000 follow-ups: 458 -> 378 MiB resident). At
    # 100,000 follow-ups (a 1.1 GB file) the caches fill any budget: 32 MiB, not 64, measured the
    # same CPU per search (bench/sqlite_reads.py) and per LTFU-shaped write on that file (B-trees'
    # interior pages still fit; leaves are read at random either way).
    cursor.execute(f"PRAGMA soft_heap_limit={SQLITE_HEAP_LIMIT_BYTES}")
    # No memory-mapped reads: every pooled connection mapped the file on its own and each page it
    # touched counted in the resident set once per mapping (``up`` holding 100,000 follow-ups, a
    # 1.1 GB file: 300-900 MiB of RssFile, the whole of the peak). Reads copy pages from the OS
    # cache into the budgeted page caches instead: on that file a search by identifier took
    # ~0.03 ms more CPU (~8%; bench/sqlite_reads.py), a 100-identifier search ~0.5-1 ms more.
    cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    cursor.close()


_READ_ONLY = "cht_interop_read_only"
# PostgreSQL: a pooled connection back in the pool for less than this is taken as alive at
# checkout; one idle longer is pinged first (a round trip), as ``pool_pre_ping`` pinged them all
PING_AFTER_IDLE_SECONDS = 1.0
_USED_AT = "cht_interop_used_at"
SQLITE_CACHE_KIB = 16 * 1024  # per connection (SQLite's default: 2 MiB); a handful are pooled
SQLITE_HEAP_LIMIT_BYTES = 32 * 1024 * 1024  # every connection's caches together, process-wide
SQLITE_MMAP_BYTES = 0  # memory-mapped I/O off: see ``_sqlite_pragmas``
SQLITE_WAL_CHECKPOINT_PAGES = 16_000  # 64 MiB of WAL: the backstop (``checkpoints.py``)


def _sqlite_begin(conn: Any) -> None:
    # Writers take the write lock up front so two of them queue instead of failing on lock upgrade;
    # readers (``Database.connect``) stay deferred: under WAL they neither wait for nor block a writer.
    if conn.connection.driver_connection.in_transaction:
        return  # ``Database.transaction`` began it on the driver
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")


_SETTLED = "cht_interop_settled"


def _sqlite_reset(dbapi_connection: Any, record: Any, state: PoolResetState) -> None:
    """A connection back in the pool is rolled back, unless its user settled it.

    SQLAlchemy rolls back every returned connection whose transaction it did not end itself, and
    ours are ended on the driver (``Database.transaction``) or never begun (driver reads): one more
    call into aiosqlite's thread per connection use, two per follow-up batch, for nothing. A use
    that ended normally marks the connection settled (every statement it sent has finished); one
    that was cancelled or failed does not, and may still have a statement queued in aiosqlite's
    thread (a ``BEGIN`` among them), so it gets the rollback, queued behind that statement.
    """
    settled = record.info.pop(_SETTLED, False)
    if not state.asyncio_safe:
        return  # the pool discards this connection
    if not settled or dbapi_connection.driver_connection.in_transaction:
        dbapi_connection.rollback()


async def _roll_back(driver: Driver) -> None:
    """Best effort, on the way out with an error: that error is what the caller must see. A
    connection whose statement was cancelled has been closed by SQLAlchemy (nothing to roll back);
    whatever else is left open, the pool's reset rolls back when the connection is returned."""
    try:
        if driver.raw.in_transaction:
            await driver.execute("ROLLBACK")
    except (ValueError, DBAPIError):
        log.warning("rollback after a failed transaction did not run; the pool resets the connection")


def _note_alive(dbapi_connection: Any, record: Any, *_rest: Any) -> None:
    """A connection just opened, or given back after use. An invalidated one comes back without
    its DBAPI connection (None) and its ``info`` emptied: the next checkout opens a new one."""
    if dbapi_connection is not None:
        record.info[_USED_AT] = time.monotonic()


def _ping_when_idle(dialect: Any) -> Callable[[Any, Any, Any], None]:
    """The pool's checkout hook on PostgreSQL: ``pool_pre_ping``, for connections idle longer than
    ``PING_AFTER_IDLE_SECONDS`` only. It pinged at every checkout: a round trip each, five of a
    single follow-up batch's ~26 (the start lock's, the look-ups', the FHIR transaction's). A
    connection used moments ago that died since (the server restarted) fails its first
    statement instead: a lost connection, answered 503 (``db/errors.py``), and SQLAlchemy then
    discards every connection the pool held before it."""

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        used_at = record.info.get(_USED_AT)
        if used_at is not None and time.monotonic() - used_at < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise DisconnectionError(f"a pooled connection did not answer its ping: {exc}") from exc
            raise

    return checkout


class Database:
    """One engine for the process; ``transaction()`` is the only way to write."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        busy_timeout_seconds: float = 30.0,
        background_checkpoints: bool = False,
    ) -> None:
        """``background_checkpoints``: a file-backed SQLite database's WAL checkpoints run in a
        thread of this process, off the writers' path (``checkpoints.py``): for the processes
        that serve writes; stopped by ``dispose``."""
        self.url = normalise_url(url)
        u = make_url(self.url)
        self.dialect = u.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        self.checkpointer: WalCheckpointer | None = None
        if self.dialect == "sqlite":
            limit_malloc_arenas()  # aiosqlite: a thread per connection, each would keep an arena
            database = sqlite_file(self.url)
            if database is not None:
                database.parent.mkdir(parents=True, exist_ok=True)
                if background_checkpoints:
                    self.checkpointer = WalCheckpointer(database)
                    self.checkpointer.start()
            kwargs["connect_args"] = {"timeout": busy_timeout_seconds}
            kwargs.update(pool_size=16, max_overflow=48)
            kwargs["pool_reset_on_return"] = None  # ``_sqlite_reset`` decides
        else:
            # pinged at checkout when idle a while (``_ping_when_idle``), not at every checkout
            kwargs.update(pool_size=10, max_overflow=10)
            # the same bound as SQLite's busy timeout on waiting for another transaction's locks
            # (rows, tables, advisory locks): past it LockNotAvailable, answered 503 (db/errors.py)
            kwargs["connect_args"] = {"options": f"-c lock_timeout={round(busy_timeout_seconds * 1000)}"}
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        # reads (``connect``): on PostgreSQL without a transaction, so without the BEGIN and the
        # ROLLBACK psycopg sent around them (READ COMMITTED: each statement reads its own snapshot
        # either way); the same pool
        self._reader = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.dialect == "postgresql"
            else self.engine
        )
        self._end_hooks: list[Callable[[dict[Any, Any], bool], None]] = []
        # SQLite has one writer. Writers of this process queue here (small ones ahead of bulk ones,
        # ``db/writers.py``) and each takes over the moment the last one commits.
        self._writer = WriterQueue()
        self._busy_timeout = busy_timeout_seconds
        if self.dialect == "sqlite":
            pragmas = functools.partial(_sqlite_pragmas, busy_timeout_ms=round(busy_timeout_seconds * 1000))
            event.listen(self.engine.sync_engine, "connect", pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
            event.listen(self.engine.sync_engine.pool, "reset", _sqlite_reset)
        else:
            pool = self.engine.sync_engine.pool
            event.listen(pool, "connect", _note_alive)
            event.listen(pool, "checkin", _note_alive)
            event.listen(pool, "checkout", _ping_when_idle(self.engine.sync_engine.dialect))

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def _writers_turn(self, bulk: bool) -> AsyncIterator[None]:
        """This process's SQLite writer lock, waited for as long as SQLite's busy timeout (then
        "database is locked": answered 503, as a lock held by another process is)."""
        try:
            async with asyncio.timeout(self._busy_timeout):
                await self._writer.acquire(bulk=bulk)
        except TimeoutError:
            raise sqlite3.OperationalError(
                f"database is locked: this process's writers queued for over {self._busy_timeout:g} s"
            ) from None
        try:
            yield
        finally:
            self._writer.release()

    @asynccontextmanager
    async def transaction(self, *, bulk: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction: committed on clean exit, rolled back on error.

        ``bulk``: a write that holds SQLite's writer long, or background work that can wait; the
        small writers waiting go first (``db/writers.py``). PostgreSQL has no such queue.

        SQLite: ``BEGIN IMMEDIATE`` and ``COMMIT`` go to the driver (one call into aiosqlite's
        thread each; through SQLAlchemy's async adaptation each cost ~0.5 ms of the event loop's
        time on the shared box, on every follow-up batch). Core statements run inside it as usual.
        """
        if not self.is_sqlite:
            async with self.engine.connect() as conn:
                info = conn.info
                try:
                    async with conn.begin():
                        yield conn
                except BaseException:
                    self._ended(info, committed=False)
                    raise
                self._ended(info, committed=True)
            return
        async with self._writers_turn(bulk), self.engine.connect() as conn:
            info = conn.info
            driver = await Driver.of(conn)
            await driver.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                await _roll_back(driver)
                self._ended(info, committed=False)
                raise
            await driver.execute("COMMIT")
            info[_SETTLED] = True
        self._ended(info, committed=True)

    def on_transaction_end(self, hook: Callable[[dict[Any, Any], bool], None], *, on: bool = True) -> None:
        """Call ``hook(connection info, committed)`` after each ``transaction()`` commits or rolls
        back (the outbox worker wakes on commits that enqueued jobs). ``on=False`` removes it."""
        if on and hook not in self._end_hooks:
            self._end_hooks.append(hook)
        elif not on and hook in self._end_hooks:
            self._end_hooks.remove(hook)

    def _ended(self, info: dict[Any, Any], *, committed: bool) -> None:
        for hook in list(self._end_hooks):
            hook(info, committed)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads only, never queued behind writers. SQLite: statements sent to the
        driver (searches) each read their own snapshot; Core statements share a deferred one.
        PostgreSQL: in autocommit, each statement its own snapshot (as READ COMMITTED gave them)."""
        async with self._reader.connect() as conn:
            if self.is_sqlite:
                await conn.execution_options(**{_READ_ONLY: True})
            yield conn
            if self.is_sqlite:
                conn.info[_SETTLED] = True  # see ``_sqlite_reset``

    async def dispose(self) -> None:
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.stop)
        await self.engine.dispose()
