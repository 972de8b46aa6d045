"""The outbox worker: claims due jobs, runs their handlers, records every attempt.

Failures are retried with exponential backoff and full jitter until the job's horizon
(``DELIVERY_HORIZON_SECONDS`` after creation, or after a retry by hand) has passed; then the job
is dead-lettered and its registration's ``on_dead`` hook runs. The hook is recorded as pending in
the write that makes the job dead and as done after it ran; a hook left pending (the process
stopped, or the hook raised) is run again by whichever worker's sweep finds it once the lease (or,
after a failure, ``DELIVERY_MAX_BACKOFF_SECONDS``) has passed. Jobs with different ordering keys
run concurrently (up to ``concurrency``, ``DELIVERY_CONCURRENCY``); jobs with the same key run one
after another because the claim query hands out only the oldest active job of each key. A kind
may have an in-flight limit (``HandlerRegistry.limit_in_flight``: the CHT's pacing window): the
worker never holds more of its jobs than that, the rest stay pending in the database (no lease
runs out while they wait); that limit is the kind's own budget, beside ``concurrency`` (the CHT's
records go many to a request: they are cheap to hold), so the other kinds keep their slots. A
peer's ``Retry-After`` (``DeliveryError.retry_after``) is the least wait before the job's next try.

The worker polls every ``DELIVERY_POLL_SECONDS`` and is also woken at once when a transaction on
the same engine that called :func:`~cht_interop.delivery.outbox.enqueue` commits, when another
process commits (``wakeups.py``: NOTIFY on PostgreSQL, the file's data version on SQLite), or by
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
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cht_interop.db import Database
from cht_interop.db.errors import is_database_busy
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import DeliveryError, DeliveryReceipt, PermanentDeliveryError
from cht_interop.delivery.registry import HandlerRegistry, Job
from cht_interop.delivery.wakeups import CommitWatch
from cht_interop.settings import Settings

log = logging.getLogger(__name__)

# after a wake finds nothing, look once more shortly after: the commit hook fires just before the
# database has made the commit visible
_RECHECK_AFTER_WAKE_SECONDS = 0.02
# how long a worker waits for the rest of a wave of finishing attempts before recording them
FINISH_LINGER_SECONDS = 0.01
# how often a worker looks for on_dead hooks left pending (by a stopped worker, or after a failure)
HOOK_SWEEP_SECONDS = 5.0


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
        concurrency: int | None = None,
        batch_size: int | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = outbox.utcnow,
        finish_linger: float = FINISH_LINGER_SECONDS,
    ) -> None:
        self.db, self.handlers, self.settings = db, handlers, settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.concurrency = max(1, concurrency or settings.delivery_concurrency)
        # one claim fills the free slots (a larger batch is one write where several would be)
        self.batch_size = max(1, batch_size or self.concurrency)
        self._rng = rng or random.Random()
        self._clock = clock  # injectable so tests can walk a retry schedule without sleeping
        self.finish_linger = finish_linger
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # waiting with nothing in flight: the commit watch looks then
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_hook_sweep: datetime | None = None  # None: at the first cycle
        self._running: dict[asyncio.Task[_Result], str] = {}  # attempt in flight → its job kind
        self.last_cycle_at: datetime | None = None  # the loop's last turn (/health/ready)

    # --- waking -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due jobs now instead of at the next poll (safe from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._wake.set()
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake.set)

    def _on_transaction_end(self, info: dict[Any, Any], committed: bool) -> None:
        if info.pop(outbox.ENQUEUED_FLAG, False) and committed:
            self.wake()

    def _listen(self, on: bool) -> None:
        self.db.on_transaction_end(self._on_transaction_end, on=on)

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and deliver until ``stop`` is set; in-flight deliveries finish before it returns.

        All database work happens here, one transaction per cycle that records every finished
        attempt and claims the next batch (group commit): handlers run concurrently, writes never
        contend with each other inside one worker.
        """
        self._loop = asyncio.get_running_loop()
        self._listen(True)
        # other processes' commits (serve's, in production) wake this worker too
        watching = asyncio.Event()
        watch = asyncio.create_task(CommitWatch(self.db, self.wake, self._idle).run(watching))
        inflight: set[asyncio.Task[_Result]] = set()
        finished: list[_Result] = []
        stop_wait = asyncio.create_task(stop.wait())
        recheck = False
        try:
            while not stop.is_set():
                self.last_cycle_at = self._clock()
                if any(t.done() for t in inflight):
                    await self._linger(inflight)
                finished.extend(_harvest(inflight))
                free = self.concurrency - len(inflight) + self._on_own_budget()
                self._wake.clear()
                want = min(free, self.batch_size)
                claimed: list[Job] = []
                if want > 0 or finished:
                    try:
                        hooks, claimed = await self._cycle(finished, want, capped=True)
                    except Exception as exc:
                        if is_database_busy(exc):  # another writer, a restarting server: expected
                            log.warning("outbox worker: database busy (%s); retrying at the next poll", exc)
                        else:
                            log.exception("outbox worker cycle failed; retrying at the next poll")
                    else:
                        finished = []
                        for job, reason in hooks:
                            self._spawn(inflight, self._run_hook(job, reason))
                for job in claimed:
                    self._running[self._spawn(inflight, self._attempt(job))] = job.kind
                if claimed and len(claimed) == want and free > want:
                    continue  # a full batch: there may be more due right now
                if any(t.done() for t in inflight):
                    continue
                timeout = _RECHECK_AFTER_WAKE_SECONDS if recheck else self.settings.delivery_poll_seconds
                wake_wait = asyncio.create_task(self._wake.wait())
                if not inflight:
                    self._idle.set()
                try:
                    done, _ = await asyncio.wait(
                        {wake_wait, stop_wait, *inflight},
                        timeout=timeout,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    wake_wait.cancel()
                    self._idle.clear()
                recheck = wake_wait in done and not claimed
        except asyncio.CancelledError:
            # killed rather than stopped: abandon the deliveries in flight; their leases expire and
            # another worker delivers them again under the same notification ids
            for task in inflight:
                task.cancel()
            raise
        finally:
            stop_wait.cancel()
            self._listen(False)
            watching.set()
            await asyncio.gather(watch, return_exceptions=True)
        if inflight:
            try:
                await asyncio.wait(inflight)
            except asyncio.CancelledError:  # the owner stopped waiting for the stragglers
                for task in inflight:
                    task.cancel()
                raise
        finished.extend(_harvest(inflight))
        if finished:
            try:
                hooks, _ = await self._cycle(finished, 0)
            except Exception:  # the leases expire; the jobs run again elsewhere (same notification id)
                log.exception("outbox worker could not record its last results")
                hooks = []
            await self._run_and_record_hooks(hooks)

    async def _linger(self, inflight: set[asyncio.Task[_Result]]) -> None:
        """Attempts finish in waves (a batch claimed together, one receiver): give the rest of the
        wave up to ``finish_linger`` seconds to finish, so one transaction records them all rather
        than one each. Wakes do not cut it short: on SQLite the worker's own commits wake it too,
        and new jobs wait at most this long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.finish_linger
        running = {t for t in inflight if not t.done()}
        while running and (left := deadline - loop.time()) > 0:
            _, running = await asyncio.wait(running, timeout=left, return_when=asyncio.FIRST_COMPLETED)

    def _spawn(
        self, inflight: set[asyncio.Task[_Result]], coro: Coroutine[Any, Any, _Result]
    ) -> asyncio.Task[_Result]:
        task = asyncio.create_task(coro)
        inflight.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[_Result]) -> None:
        self._running.pop(task, None)

    def _on_own_budget(self) -> int:
        """Jobs running of the kinds with an in-flight limit (their own budget, not ``concurrency``'s)."""
        running = Counter(self._running.values())
        return sum(n for kind, n in running.items() if self.handlers.in_flight_limit(kind) is not None)

    def _claim_groups(self, limit: int, capped: bool) -> list[tuple[list[str], int]]:
        """What to claim: (kinds, at most how many) per group. ``capped``: each kind with an
        in-flight limit (``HandlerRegistry.limit_in_flight``) is its own group, sized by its free
        room (a kind at its limit waits in the database), first; the other kinds share the rest."""
        kinds = self.handlers.kinds
        if not capped:
            return [(kinds, limit)]
        running: dict[str, int] = {}
        for kind in self._running.values():
            running[kind] = running.get(kind, 0) + 1
        groups: list[tuple[list[str], int]] = []
        free: list[str] = []
        for kind in kinds:
            cap = self.handlers.in_flight_limit(kind)
            if cap is None:
                free.append(kind)
            elif (room := cap - running.get(kind, 0)) > 0:
                groups.append(([kind], room))
        if free:
            groups.append((free, limit))
        return groups

    async def _run_and_record_hooks(self, hooks: list[tuple[Job, str]]) -> None:
        """Run dead-letter hooks and record them (a hook not recorded stays pending: run again later)."""
        if not hooks:
            return
        runs = list(await asyncio.gather(*(self._run_hook(job, reason) for job, reason in hooks)))
        try:
            await self._cycle(runs, 0)
        except Exception:
            log.exception("outbox worker could not record its on_dead hooks; they run again later")

    async def run_once(self, *, limit: int | None = None) -> list[Outcome]:
        """Claim one batch and deliver it to the end (tests, benches, one-shot commands).

        Also runs the ``on_dead`` hooks this worker's sweep found pending (a stopped worker's)."""
        hooks, claimed = await self._cycle([], limit or self.batch_size)
        results = list(
            await asyncio.gather(
                *(self._attempt(job) for job in claimed),
                *(self._run_hook(job, reason) for job, reason in hooks),
            )
        )
        if not results:
            return []
        hooks, _ = await self._cycle(results, 0)
        await self._run_and_record_hooks(hooks)
        return [r.outcome or Outcome(r.job.id, "lost") for r in results if r.status != "hook"]

    async def drain(self, *, max_rounds: int = 10_000) -> list[Outcome]:
        """Run batches until nothing is due now (jobs rescheduled for later stay pending)."""
        outcomes: list[Outcome] = []
        for _ in range(max_rounds):
            batch = await self.run_once()
            if not batch:
                break
            outcomes.extend(batch)
        return outcomes

    # --- one cycle: record what finished, claim what is due ----------------------------------

    async def _cycle(
        self, results: list[_Result], limit: int, *, capped: bool = False
    ) -> tuple[list[tuple[Job, str]], list[Job]]:
        """One transaction. Records finished attempts (filling in each one's final ``outcome``) and
        hook runs, claims up to ``limit`` jobs (``capped``: within each kind's in-flight limit)
        and, now and then, the hooks left pending.

        Returns (hooks to run now, each with its job's reason for dying; claimed jobs).
        """
        groups = self._claim_groups(limit, capped) if limit > 0 else []
        if not results and not groups:
            return [], []
        now = self._clock()
        attempts = [r for r in results if r.status != "hook"]
        hook_runs = [outbox.HookRun(r.job.id, r.text) for r in results if r.status == "hook"]
        hooks: list[tuple[Job, str]] = []
        async with self.db.transaction() as conn:
            horizons = await outbox.horizons(conn, [r.job.id for r in attempts if r.status == "retry"])
            finishes = [self._finish(r, now, horizons) for r in attempts]
            written = await outbox.finish_many(conn, finishes, worker_id=self.worker_id, now=now)
            if hook_runs:
                retry_at = now + timedelta(seconds=self.settings.delivery_max_backoff_seconds)
                await outbox.finish_hooks(
                    conn, hook_runs, worker_id=self.worker_id, retry_at=retry_at, now=now
                )
            claimed: list[Job] = []
            for kinds, most in groups:
                if (want := min(most, limit - len(claimed))) > 0 and kinds:
                    claimed += await outbox.claim(
                        conn,
                        kinds=kinds,
                        worker_id=self.worker_id,
                        lease_seconds=self.settings.delivery_lease_seconds,
                        limit=want,
                        now=now,
                    )
            sweep_due = self._next_hook_sweep is None or now >= self._next_hook_sweep
            if groups and self.handlers.kinds and sweep_due:
                self._next_hook_sweep = now + timedelta(seconds=HOOK_SWEEP_SECONDS)
                hooks = await outbox.claim_hooks(
                    conn,
                    kinds=self._hook_kinds(),
                    worker_id=self.worker_id,
                    lease_seconds=self.settings.delivery_lease_seconds,
                    limit=limit,
                    now=now,
                )
                for job, _reason in hooks:
                    log.warning("outbox job %s (%s): running its pending on_dead hook", job.id, job.kind)
        for r, f in zip(attempts, finishes, strict=True):
            if f.job.id not in written:
                r.outcome = Outcome(f.job.id, "lost", f.error)
                continue
            status = {"done": "done", "pending": "retry", "dead": "dead"}[f.status]
            r.outcome = Outcome(f.job.id, status, f.error)
            if status == "retry":
                log.warning(
                    "outbox job %s (%s) to %s failed: %s; retry in %.0f s, attempt %d",
                    f.job.id,
                    f.job.kind,
                    f.job.target,
                    f.error,
                    ((f.next_attempt_at or now) - now).total_seconds(),
                    f.job.attempts + 1,
                )
            elif status == "done":
                log.info(
                    "outbox job %s (%s) to %s done: %s", f.job.id, f.job.kind, f.job.target, f.note or "ok"
                )
            elif status == "dead":
                log.warning(
                    "outbox job %s (%s) to %s dead-lettered: %s", f.job.id, f.job.kind, f.job.target, f.error
                )
                if f.hook_until is not None:
                    # the reason as stored, so a re-run after a crash gets the very same text
                    hooks.append((f.job, outbox.clip(f.error) or "failed"))
        return hooks, claimed

    def _hook_kinds(self) -> list[str]:
        return [k for k in self.handlers.kinds if (reg := self.handlers.get(k)) and reg.on_dead]

    def _finish(self, r: _Result, now: datetime, horizons: dict[int, datetime]) -> outbox.Finish:
        """Decide how an attempt ends: done, retry after a jittered backoff, or dead (hook pending)."""
        job = r.job
        if r.status == "done":
            return outbox.Finish(job, "done", "success", http_status=r.http_status, note=r.text)
        reason = r.text or "failed"
        if r.status == "retry":
            end = horizons.get(job.id, job.created_at) + timedelta(
                seconds=self.settings.live.delivery_horizon_seconds
            )
            if now < end:
                delay = backoff_delay(
                    job.attempts + 1,
                    initial=self.settings.delivery_initial_backoff_seconds,
                    maximum=self.settings.delivery_max_backoff_seconds,
                    rng=self._rng,
                )
                if r.retry_after is not None:  # the peer said when: not before, jittered after
                    delay = max(delay, r.retry_after * (1 + self._rng.random() / 4))
                # never skip the horizon: the last try happens at its end
                due = min(now + timedelta(seconds=delay), end)
                return outbox.Finish(
                    job, "pending", "retry", http_status=r.http_status, error=reason, next_attempt_at=due
                )
            reason = (
                f"gave up after {job.attempts + 1} attempt(s) over "
                f"{self.settings.live.delivery_horizon_seconds:g} s; last error: {reason}"
            )
        registration = self.handlers.get(job.kind)
        hook_until = None
        if registration is not None and registration.on_dead is not None:
            hook_until = now + timedelta(seconds=self.settings.delivery_lease_seconds)
        return outbox.Finish(
            job, "dead", "dead", http_status=r.http_status, error=reason, hook_until=hook_until
        )

    # --- one job ----------------------------------------------------------------------------

    async def _attempt(self, job: Job) -> _Result:
        """Run the handler; classify what happened (no database work here)."""
        registration = self.handlers.get(job.kind)
        if registration is None:  # cannot happen: only registered kinds are claimed
            return _Result(job, "retry", None, f"no handler for job kind {job.kind!r}")
        try:
            result = await registration.handler(job)
        except asyncio.CancelledError:
            raise  # shutdown: the lease expires and another worker takes the job again
        except PermanentDeliveryError as exc:
            return _Result(job, "dead", exc.http_status, _describe(exc))
        except Exception as exc:
            if isinstance(exc, DeliveryError):
                return _Result(job, "retry", exc.http_status, _describe(exc), exc.retry_after)
            return _Result(job, "retry", None, _describe(exc))
        receipt = result if isinstance(result, DeliveryReceipt) else DeliveryReceipt(note=result)
        return _Result(job, "done", receipt.http_status, receipt.note)

    async def _run_hook(self, job: Job, reason: str) -> _Result:
        """Run the kind's ``on_dead`` hook; a hook result (text: the error, None when it ran)."""
        registration = self.handlers.get(job.kind)
        if registration is None or registration.on_dead is None:  # only hooked kinds get here
            return _Result(job, "hook", None, None)
        try:
            await registration.on_dead(job, reason)
        except asyncio.CancelledError:
            raise  # shutdown: the hook stays pending and runs again after the lease
        except Exception as exc:
            log.exception("on_dead hook of outbox job %s (%s) failed; it runs again later", job.id, job.kind)
            return _Result(job, "hook", None, _describe(exc))
        return _Result(job, "hook", None, None)


@dataclass(slots=True)
class _Result:
    """A handler run, before it is written: status done | retry | dead, or hook (an on_dead hook ran;
    ``text`` is its error, None if it succeeded)."""

    job: Job
    status: str
    http_status: int | None
    text: str | None  # error, or the handler's note on success
    retry_after: float | None = None  # the peer's Retry-After, seconds (a retry only)
    outcome: Outcome | None = None


def _harvest(inflight: set[asyncio.Task[_Result]]) -> list[_Result]:
    """Take the finished tasks out of ``inflight``; results that need writing."""
    done = [t for t in inflight if t.done()]
    inflight.difference_update(done)
    results = []
    for task in done:
        if task.cancelled() or task.exception() is not None:
            continue  # cancelled at shutdown: the lease will expire and the job (or hook) runs again
        results.append(task.result())
    return results
