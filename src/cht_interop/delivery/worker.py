"""The outbox worker: claims due jobs, runs their handlers, records every attempt.

Failures are retried with exponential backoff and full jitter until the job's horizon
(``DELIVERY_HORIZON_SECONDS`` after creation, or after a retry by hand) has passed; then the job
is dead-lettered and its registration's ``on_dead`` hook runs. Jobs with different ordering keys
run concurrently (up to ``concurrency``); jobs with the same key run one after another because
the claim query hands out only the oldest active job of each key.

The worker polls every ``DELIVERY_POLL_SECONDS`` and is also woken at once when a transaction on
the same engine that called :func:`~cht_interop.delivery.outbox.enqueue` commits, or by
:meth:`OutboxWorker.wake`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event

from cht_interop.db import Database
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import DeliveryError, DeliveryReceipt, PermanentDeliveryError
from cht_interop.delivery.registry import HandlerRegistry, Job
from cht_interop.settings import Settings

log = logging.getLogger(__name__)

# after a wake finds nothing, look once more shortly after: the commit hook fires just before the
# database has made the commit visible
_RECHECK_AFTER_WAKE_SECONDS = 0.02


def backoff_delay(
    attempts: int, *, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after ``attempts`` failed attempts: uniform in [0, min(max, initial·2^(n-1))].

    Full jitter spreads retries from many jobs that failed together (a peer outage) instead of
    bringing them back in one wave.
    """
    cap = min(maximum, initial * 2.0 ** min(max(attempts - 1, 0), 60))
    return (rng or random).uniform(0, cap)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run of a handler came to (for tests and benches)."""

    job_id: int
    status: str  # done | retry | dead | lost (another worker took the job over)
    error: str | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, DeliveryError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OutboxWorker:
    """One worker loop; run several (processes or tasks) against PostgreSQL for throughput."""

    def __init__(
        self,
        db: Database,
        handlers: HandlerRegistry,
        settings: Settings,
        *,
        worker_id: str | None = None,
        concurrency: int = 16,
        batch_size: int = 16,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = outbox.utcnow,
    ) -> None:
        self.db, self.handlers, self.settings = db, handlers, settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.concurrency = max(1, concurrency)
        self.batch_size = max(1, batch_size)
        self._rng = rng or random.Random()
        self._clock = clock  # injectable so tests can walk a retry schedule without sleeping
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- waking -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due jobs now instead of at the next poll (safe from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._wake.set()
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake.set)

    def _on_commit(self, conn: Any) -> None:
        if conn.info.pop(outbox.ENQUEUED_FLAG, False):
            self.wake()

    def _on_rollback(self, conn: Any) -> None:
        conn.info.pop(outbox.ENQUEUED_FLAG, None)

    def _listen(self, on: bool) -> None:
        target = self.db.engine.sync_engine
        for name, fn in (("commit", self._on_commit), ("rollback", self._on_rollback)):
            if on and not event.contains(target, name, fn):
                event.listen(target, name, fn)
            elif not on and event.contains(target, name, fn):
                event.remove(target, name, fn)

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and deliver until ``stop`` is set; in-flight deliveries finish before it returns."""
        self._loop = asyncio.get_running_loop()
        self._listen(True)
        inflight: set[asyncio.Task[Outcome]] = set()
        stop_wait = asyncio.create_task(stop.wait())
        recheck = False
        try:
            while not stop.is_set():
                free = self.concurrency - len(inflight)
                self._wake.clear()
                claimed: list[Job] = []
                if free > 0:
                    try:
                        claimed = await self._claim(min(free, self.batch_size))
                    except Exception:
                        log.exception("outbox claim failed; retrying at the next poll")
                for job in claimed:
                    task = asyncio.create_task(self._process(job), name=f"outbox-job-{job.id}")
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                if claimed and len(inflight) < self.concurrency:
                    continue  # there may be more due right now
                timeout = _RECHECK_AFTER_WAKE_SECONDS if recheck else self.settings.delivery_poll_seconds
                wake_wait = asyncio.create_task(self._wake.wait())
                try:
                    done, _ = await asyncio.wait(
                        {wake_wait, stop_wait, *inflight},
                        timeout=timeout,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    wake_wait.cancel()
                recheck = wake_wait in done and not claimed
        finally:
            stop_wait.cancel()
            self._listen(False)
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)

    async def run_once(self, *, limit: int | None = None) -> list[Outcome]:
        """Claim one batch and deliver it to the end (tests, benches, one-shot commands)."""
        claimed = await self._claim(limit or self.batch_size)
        return list(await asyncio.gather(*(self._process(job) for job in claimed)))

    async def drain(self, *, max_rounds: int = 10_000) -> list[Outcome]:
        """Run batches until nothing is due now (jobs rescheduled for later stay pending)."""
        outcomes: list[Outcome] = []
        for _ in range(max_rounds):
            batch = await self.run_once()
            if not batch:
                break
            outcomes.extend(batch)
        return outcomes

    # --- one job ----------------------------------------------------------------------------

    async def _claim(self, limit: int) -> list[Job]:
        kinds = self.handlers.kinds
        if not kinds:
            return []
        async with self.db.transaction() as conn:
            return await outbox.claim(
                conn,
                kinds=kinds,
                worker_id=self.worker_id,
                lease_seconds=self.settings.delivery_lease_seconds,
                limit=limit,
                now=self._clock(),
            )

    async def _process(self, job: Job) -> Outcome:
        registration = self.handlers.get(job.kind)
        if registration is None:  # unregistered after the claim: leave it for the lease to expire
            return Outcome(job.id, "lost", "no handler")
        try:
            result = await registration.handler(job)
        except asyncio.CancelledError:
            raise  # shutdown: the lease expires and another worker takes the job again
        except PermanentDeliveryError as exc:
            return await self._dead(job, _describe(exc), exc.http_status)
        except Exception as exc:
            status = exc.http_status if isinstance(exc, DeliveryError) else None
            return await self._retry(job, _describe(exc), status)
        receipt = result if isinstance(result, DeliveryReceipt) else DeliveryReceipt(note=result)
        async with self.db.transaction() as conn:
            ok = await outbox.complete(
                conn,
                job,
                worker_id=self.worker_id,
                http_status=receipt.http_status,
                note=receipt.note,
                now=self._clock(),
            )
        return Outcome(job.id, "done" if ok else "lost")

    def _horizon_end(self, job_horizon_from: datetime) -> datetime:
        return job_horizon_from + timedelta(seconds=self.settings.delivery_horizon_seconds)

    async def _retry(self, job: Job, error: str, http_status: int | None) -> Outcome:
        now = self._clock()
        async with self.db.transaction() as conn:
            record = await outbox.get_job(conn, job.id)
            horizon_from = record.horizon_from if record is not None else job.created_at
            end = self._horizon_end(horizon_from)
            if now >= end:
                reason = (
                    f"gave up after {job.attempts + 1} attempt(s) over "
                    f"{self.settings.delivery_horizon_seconds:g} s; last error: {error}"
                )
                ok = await outbox.dead_letter(
                    conn, job, worker_id=self.worker_id, reason=reason, http_status=http_status, now=now
                )
                dead = True
            else:
                delay = backoff_delay(
                    job.attempts + 1,
                    initial=self.settings.delivery_initial_backoff_seconds,
                    maximum=self.settings.delivery_max_backoff_seconds,
                    rng=self._rng,
                )
                # never skip the horizon: the last try happens at its end
                due = min(now + timedelta(seconds=delay), end)
                ok = await outbox.reschedule(
                    conn,
                    job,
                    worker_id=self.worker_id,
                    next_attempt_at=due,
                    error=error,
                    http_status=http_status,
                    now=now,
                )
                dead = False
        if not ok:
            return Outcome(job.id, "lost", error)
        if dead:
            await self._run_on_dead(job, reason)
            return Outcome(job.id, "dead", reason)
        log.info("outbox job %s (%s) failed, retrying: %s", job.id, job.kind, error)
        return Outcome(job.id, "retry", error)

    async def _dead(self, job: Job, reason: str, http_status: int | None) -> Outcome:
        async with self.db.transaction() as conn:
            ok = await outbox.dead_letter(
                conn, job, worker_id=self.worker_id, reason=reason, http_status=http_status, now=self._clock()
            )
        if not ok:
            return Outcome(job.id, "lost", reason)
        await self._run_on_dead(job, reason)
        return Outcome(job.id, "dead", reason)

    async def _run_on_dead(self, job: Job, reason: str) -> None:
        log.warning("outbox job %s (%s) dead-lettered: %s", job.id, job.kind, reason)
        registration = self.handlers.get(job.kind)
        if registration is None or registration.on_dead is None:
            return
        try:
            await registration.on_dead(job, reason)
        except Exception:
            log.exception("on_dead hook of outbox job %s (%s) failed", job.id, job.kind)
