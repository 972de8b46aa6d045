"""Outbox job attempts in the journal, and the journal's own retention purge job.

``JournaledHandlers`` is the process's handler registry: every handler a domain registers runs
inside a recording (its outbound calls become the row's orchestrations, with a transaction id of
its own bound to the log context), and each attempt is queued as a row linked to what the job's
payload names (``follow_up``, ``subscription_id``, …: see ``entries.py``). ``journal.purge``
deletes rows older than ``JOURNAL_RETENTION_SECONDS`` and puts its next run in the outbox
(``ensure_purge_scheduled`` starts the chain with each worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import structlog

from cht_interop.db import Database
from cht_interop.delivery.jobs import DeliveryError, DeliveryReceipt, NewJob, PermanentDeliveryError
from cht_interop.delivery.outbox import enqueue
from cht_interop.delivery.outbox.admin import list_jobs
from cht_interop.delivery.registry import DeadLetterHook, Handler, HandlerRegistry, Job
from cht_interop.journal import store
from cht_interop.journal.entries import JobDone
from cht_interop.journal.writer import JournalWriter
from cht_interop.kit import exchanges
from cht_interop.settings import Settings

log = logging.getLogger(__name__)

PURGE_JOB = "journal.purge"
PURGE_EVERY_SECONDS = 3600.0


class JournaledHandlers(HandlerRegistry):
    """A handler registry whose handlers are journaled (and counted by kind and outcome)."""

    def __init__(self, writer: JournalWriter) -> None:
        super().__init__()
        self.writer = writer
        self.attempts: Counter[tuple[str, str]] = Counter()  # (kind, done | failed | dead) → count

    def register(self, kind: str, handler: Handler, *, on_dead: DeadLetterHook | None = None) -> None:
        super().register(kind, self._journaled(handler), on_dead=on_dead)

    def _journaled(self, handler: Handler) -> Handler:
        writer, attempts = self.writer, self.attempts

        async def run(job: Job) -> str | DeliveryReceipt | None:
            transaction_id = str(uuid.uuid4())
            recording = exchanges.start(transaction_id)
            started, clock = datetime.now(UTC), time.perf_counter()
            outcome, status, note = "failed", None, None
            follow_up = job.payload.get("follow_up")
            try:
                with structlog.contextvars.bound_contextvars(
                    transaction_id=transaction_id, job_id=job.id, job_kind=job.kind, follow_up_id=follow_up
                ):
                    result = await handler(job)
            except PermanentDeliveryError as exc:
                outcome, status, note = "dead", exc.http_status, str(exc)
                raise
            except DeliveryError as exc:
                status, note = exc.http_status, str(exc)
                raise
            except Exception as exc:
                note = f"{type(exc).__name__}: {exc}"
                raise
            else:
                receipt = result if isinstance(result, DeliveryReceipt) else DeliveryReceipt(note=result)
                outcome, status, note = "done", receipt.http_status, receipt.note
                return result
            finally:
                if note is not None or outcome == "done":  # not when cancelled (shutdown)
                    attempts[(job.kind, outcome)] += 1
                    writer.submit(
                        JobDone(
                            transaction_id=transaction_id,
                            started_at=started,
                            duration_ms=(time.perf_counter() - clock) * 1000,
                            job_id=job.id,
                            kind=job.kind,
                            target=job.target,
                            attempt=job.attempts + 1,
                            payload=job.payload,
                            outcome=outcome,
                            status=status,
                            note=note,
                            exchanges=list(recording.exchanges),
                            properties=dict(recording.properties),
                        )
                    )

        return run


class JournalPurge:
    """The ``journal.purge`` job: old rows go in short chunks, then the next run is scheduled."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.retention = settings.journal_retention_seconds

    async def purge(self, job: Job) -> str:
        before = datetime.now(UTC) - timedelta(seconds=self.retention)
        total = 0
        while True:
            async with self.db.transaction() as conn:
                deleted = await store.purge(conn, before=before)
            total += deleted
            if deleted < store.PURGE_CHUNK:
                break
        await schedule_purge(self.db, due=datetime.now(UTC) + timedelta(seconds=self.every))
        return f"{total} journal row(s) older than {self.retention:g} s deleted"

    @property
    def every(self) -> float:
        return min(PURGE_EVERY_SECONDS, float(self.retention))


async def schedule_purge(db: Database, *, due: datetime) -> bool:
    """Put a purge job in the outbox unless one is already waiting; True if one was added."""
    async with db.transaction() as conn:
        if await list_jobs(conn, status="pending", kind=PURGE_JOB, limit=1):
            return False
        await enqueue(conn, [NewJob(kind=PURGE_JOB, target="journal retention")], now=due)
    return True


async def ensure_purge_scheduled(db: Database) -> bool:
    """Start the purge chain (each worker at its start; a second one changes nothing)."""
    async with db.connect() as conn:
        if await list_jobs(conn, status="running", kind=PURGE_JOB, limit=1):
            return False
    return await schedule_purge(db, due=datetime.now(UTC))


async def keep_purge_scheduled(db: Database, stop: asyncio.Event) -> None:
    """``ensure_purge_scheduled``, retried with a backoff while the database cannot answer (it may
    be restarting as the worker starts), until it is done or ``stop`` is set: a worker must not
    die for it, nor wait for it before delivering."""
    delay = 0.5
    while not stop.is_set():
        try:
            await ensure_purge_scheduled(db)
            return
        except Exception as exc:
            log.warning("journal purge not scheduled yet (%s); retrying in %.1f s", exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(30.0, delay * 2)


def register_handlers(handlers: HandlerRegistry, db: Database, settings: Settings) -> None:
    """The journal's own job (``handlers.py`` calls every domain's)."""
    handlers.register(PURGE_JOB, JournalPurge(db, settings).purge)
