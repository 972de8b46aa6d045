"""The background ANALYZE after a bulk write (PostgreSQL).

After a committed transaction that wrote many resources, PostgreSQL's planner statistics are
refreshed at once, in the background. Until autovacuum gets round to it (a minute or more), plans
made with the old row counts turned the LTFU look-ups into scans taking tens of seconds. One
device, one place: a transaction Bundle reports here how many resources it wrote once it has
committed (the single-resource writes never reach the threshold).
"""

from __future__ import annotations

import asyncio
import logging

from cht_interop.db import Database
from cht_interop.fhir import sql

ANALYZE_AFTER = 2000  # resources written in one transaction that trigger a background ANALYZE (PG)
log = logging.getLogger(__name__)


class BulkAnalyzer:
    """Starts at most one ANALYZE at a time, after a transaction wrote :data:`ANALYZE_AFTER`
    resources or more; SQLite has nothing to do."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.task: asyncio.Task[None] | None = None  # the running ANALYZE, if any

    def after_write(self, written: int) -> None:
        """Call after a committed write transaction with the number of resources it wrote."""
        if written < ANALYZE_AFTER or not self.db.is_postgresql:
            return
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._analyze())

    async def _analyze(self) -> None:
        try:
            async with self.db.transaction() as conn:
                await sql.analyze(conn)
        except Exception:  # best effort: autovacuum will do it later anyway
            log.warning("ANALYZE after a bulk write failed", exc_info=True)
