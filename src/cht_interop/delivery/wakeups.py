"""Waking a worker when another process commits jobs: the poll is the fallback, not the path.

In production the API (``serve``) and the worker are separate processes, so the commit hook that
wakes a worker (``Database.on_transaction_end``) only sees its own process's commits: a callback
whose Encounter ``serve`` stored waited for the worker's next poll (``DELIVERY_POLL_SECONDS``,
0.5 s), half of that on average. :class:`CommitWatch` closes the gap:

- PostgreSQL: every enqueue sends ``NOTIFY`` (``outbox.mark_enqueued``) in its transaction (delivered
  at commit, not before, and not at all on rollback); the watch ``LISTEN``s on a connection of its
  own and wakes the worker on each notification. A lost connection is reopened with a backoff.
- SQLite: ``PRAGMA data_version`` on a connection of its own changes whenever another connection
  commits to the file; the watch reads it every :data:`SQLITE_WATCH_SECONDS` (a read of the WAL
  index in shared memory: no disk I/O, no lock) and wakes the worker when it moved. It looks only
  while the worker is idle (nothing in flight): a busy worker claims again as each attempt
  finishes, and every one of this process's own commits moves the version too, so looking 100
  times a second under load was ~4% of ``up``'s main thread for wakes it did not need. A commit
  made while the worker was busy is seen at the first look once it is idle.

A wake is only a hint: the worker then claims what is due, as its poll would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable

from sqlalchemy.engine import make_url

from cht_interop.db import Database
from cht_interop.delivery.outbox.shared import OUTBOX_CHANNEL

log = logging.getLogger(__name__)

# how often a worker on SQLite looks for other processes' commits (~10 µs a look)
SQLITE_WATCH_SECONDS = 0.01
# after a lost LISTEN connection, wait this long before reconnecting (doubling to the maximum)
RELISTEN_SECONDS = (0.5, 30.0)


class CommitWatch:
    """Calls ``wake`` when another connection may have committed jobs, until ``stop`` is set."""

    def __init__(self, db: Database, wake: Callable[[], None], idle: asyncio.Event | None = None) -> None:
        self.db = db
        self.wake = wake
        # SQLite: looks only while this is set (None: always); PostgreSQL's LISTEN costs nothing idle
        self.idle = idle

    async def run(self, stop: asyncio.Event) -> None:
        watch = self._listen if self.db.is_postgresql else self._watch_sqlite
        task = asyncio.create_task(watch())
        try:
            await stop.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen(self) -> None:
        # imported here, on PostgreSQL only: on SQLite psycopg never loads (~8 MiB of ``up``)
        import psycopg

        url = make_url(self.db.url).set(drivername="postgresql").render_as_string(hide_password=False)
        delay, longest = RELISTEN_SECONDS
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
                    delay = RELISTEN_SECONDS[0]
                    self.wake()  # anything committed while no one listened
                    async for _ in conn.notifies():
                        self.wake()
            except psycopg.Error as exc:
                log.warning("outbox wake-ups: LISTEN connection lost (%s); polling until it is back", exc)
            await asyncio.sleep(delay)
            delay = min(longest, delay * 2)

    async def _watch_sqlite(self) -> None:
        path = make_url(self.db.url).database
        if not path or path == ":memory:":
            return  # a private in-memory database has no other process to watch
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                last = _data_version(conn)
                while True:
                    if self.idle is not None:
                        await self.idle.wait()
                    await asyncio.sleep(SQLITE_WATCH_SECONDS)
                    now = _data_version(conn)
                    if now != last:
                        last = now
                        self.wake()
            finally:
                conn.close()
        except sqlite3.Error as exc:  # the poll still finds every job
            log.warning("outbox wake-ups: cannot watch the SQLite file (%s); polling only", exc)


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
