"""The background ANALYZE after bulk writes (PostgreSQL).

PostgreSQL's planner statistics are refreshed at once, in the background, after a committed
transaction that wrote many resources, and after the process has written as many again in
small transactions as it had written by its last refresh (2,000, 4,000, 8,000, ... resources
in all): a bulk load of 500-entry Bundles or of single writes into a new database changes the
row counts as much as one big transaction does. Until autovacuum gets round to it (a minute or
more), plans made with the old row counts turned the LTFU look-ups into scans taking tens of
seconds (a batch's open-Task search: 340-450 ms instead of ~1 ms, right after a seed of single
writes). The doubling keeps a long-running process from refreshing every few seconds under
steady load: by then the tables are large, their counts move slowly, and autovacuum keeps up.
One device, one place: every committed write transaction of the store reports here how many
resources it wrote.
"""

from __future__ import annotations

import asyncio
import logging

from cht_interop.db import Database
from cht_interop.fhir import sql

ANALYZE_AFTER = 2000  # resources written in one transaction (or in all, first) that trigger an ANALYZE (PG)
log = logging.getLogger(__name__)


class BulkAnalyzer:
    """Starts at most one ANALYZE at a time: after a transaction wrote :data:`ANALYZE_AFTER`
    resources or more, or once this process's writes in all reach the next mark (2,000, then
    double the last mark); SQLite has nothing to do."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.task: asyncio.Task[None] | None = None  # the running ANALYZE, if any
        self.written = 0  # resources this process has written in all
        self.next_mark = ANALYZE_AFTER  # the count of all writes that starts the next refresh

    def after_write(self, written: int) -> None:
        """Call after a committed write transaction with the number of resources it wrote."""
        if not self.db.is_postgresql or written <= 0:
            return
        self.written += written
        if written < ANALYZE_AFTER and self.written < self.next_mark:
            return
        while self.next_mark <= self.written:
            self.next_mark *= 2
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._analyze())

    async def _analyze(self) -> None:
        try:
            async with self.db.transaction() as conn:
                await sql.analyze(conn)
        except Exception:  # best effort: autovacuum will do it later anyway
            log.warning("ANALYZE after a bulk write failed", exc_info=True)
