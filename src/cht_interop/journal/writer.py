"""Journal rows leave the request path: queued in memory, written by one background task in batches.

A request only appends its raw materials to a bounded queue (~15 µs of the request's CPU with the
middleware, measured); the writer wakes, waits up to ``LINGER_SECONDS`` for ``BATCH_TARGET`` rows,
then builds the rows (redaction, capping) and writes everything waiting in one transaction (group
commit: on SQLite one writer lock for the lot). Measured on the shared 2-core box, CPU per row:
~13 µs to build, ~50 µs to insert in batches of 50 (~180 µs in batches of 5). When the database
cannot keep up the queue stays bounded: rows beyond ``JOURNAL_QUEUE_MAX`` are dropped and counted
(``dropped``, shown in /metrics and /health/ready), never the requests' answers delayed. A batch
refused because the database is busy (another process holds SQLite's write lock) goes back to the
head of the queue and is tried again after ``BUSY_PAUSE_SECONDS``: the requests answered 503
meanwhile are journaled too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from cht_interop.db import Database
from cht_interop.db.errors import is_database_busy
from cht_interop.journal import store
from cht_interop.journal.entries import BodyPolicy, JobDone, RequestDone, Row, job_row, request_row
from cht_interop.kit.fair import in_thread

log = logging.getLogger(__name__)
LINGER_SECONDS = 0.25
# Rows a write waits for. On SQLite each write holds the one writer that the follow-ups' own
# transactions need, and a follow-up batch arriving meanwhile waits for it: at 200 rows (~25 ms
# held under load) single follow-ups' p99 was 32-43 ms at 8 clients and 73-126 ms at 32; at 50,
# 24-30 and 57-99 ms, in 7 of 7 and 6 of 7 alternated pairs, at the same CPU per follow-up (the
# insert costs ~50 µs a row from batches of 50 up; docs/performance.md, the device table).
BATCH_TARGET = 50
BATCH_MAX = 1000
BUSY_PAUSE_SECONDS = 0.5


@dataclass
class PeerState:
    """The last outbound call to one host, from any request or job (for /health/ready)."""

    last_call_at: str
    last_status: int | None  # None: no answer came

    @property
    def reachable(self) -> bool:
        return self.last_status is not None and self.last_status < 500


class JournalWriter:
    """One per process. ``submit`` from anywhere on the loop; ``start``/``stop`` by the lifespan."""

    def __init__(self, db: Database, *, bodies: BodyPolicy, queue_max: int, enabled: bool = True) -> None:
        self.db = db
        self.bodies = bodies
        self.enabled = enabled
        self.queue_max = max(1, queue_max)
        self.written = 0
        self.dropped = 0  # rows lost: queue full, or their batch's write failed
        self.peers: dict[str, PeerState] = {}
        self._queue: deque[RequestDone | JobDone] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is queued or being written
        self._idle.set()
        self._full = asyncio.Event()  # BATCH_TARGET rows wait (or a flush): write now
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def submit(self, done: RequestDone | JobDone) -> None:
        """Queue a row (dropped and counted when the queue is full)."""
        if not self.enabled:
            return
        if len(self._queue) >= self.queue_max:
            if self.dropped % 1000 == 0:
                log.warning(
                    "journal queue full (%d rows): dropping rows; the database is slow", self.queue_max
                )
            self.dropped += 1
            return
        self._queue.append(done)
        self._idle.clear()
        self._wake.set()
        if len(self._queue) >= BATCH_TARGET:
            self._full.set()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="journal-writer")

    async def stop(self) -> None:
        """Write what is queued, then end the task."""
        self._stopping = True
        self._full.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout=10)
            self._task = None

    async def flush(self) -> None:
        """Return once everything queued so far is written (tests; callers bound it with a timeout)."""
        if self._task is None:
            return
        self._full.set()
        self._wake.set()
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), LINGER_SECONDS)
            self._full.clear()
            if self._queue:  # (woken by rows a backlog write already took: nothing left)
                await self._write_batch()
            # Only a backlog is written at once. The rows that came during the write linger for
            # company again: under steady load they used to be written straight away, one small
            # transaction per burst of answers (two a group commit of single follow-ups at 32
            # clients, each a commit and a WAL sync competing with the follow-ups' own writes).
            while len(self._queue) >= BATCH_TARGET or (self._queue and self._stopping):
                await self._write_batch()
            if self._queue:
                self._wake.set()
                continue
            self._idle.set()
            if self._stopping:
                return

    async def _write_batch(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(BATCH_MAX, len(self._queue)))]
        try:
            for done in batch:
                self._note_peers(done)
            # built in a worker thread: a long list's row (its ~75 store calls shown) held the
            # loop ~40 ms in one go, every client's request waiting (kit/fair.py)
            rows = await in_thread(lambda: [self._row(done) for done in batch])
            async with self.db.transaction(bulk=True) as conn:  # background: requests' writes first
                await store.insert_rows(conn, rows)
        except Exception as exc:
            if is_database_busy(exc) and not self._stopping:
                self._queue.extendleft(reversed(batch))  # kept in order, still within queue_max
                log.warning("journal: the database is busy; %d row(s) wait for it", len(self._queue))
                await asyncio.sleep(BUSY_PAUSE_SECONDS)
                return
            self.dropped += len(batch)
            log.exception("journal: %d row(s) could not be written and are lost", len(batch))
        else:
            self.written += len(batch)

    def _note_peers(self, done: RequestDone | JobDone) -> None:
        for exchange in done.exchanges:
            host = exchange.url.host
            if host:
                self.peers[host] = PeerState(exchange.answered_at or exchange.sent_at, exchange.status)

    def _row(self, done: RequestDone | JobDone) -> Row:
        if isinstance(done, RequestDone):
            return request_row(done, self.bodies)
        return job_row(done, self.bodies)


def utcnow() -> datetime:
    return datetime.now(UTC)
