"""What the CLI and console read and do by hand: jobs with their attempts, counts, a dead job's
retry, discarding a dead or failing job, and purging delivered jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.delivery.outbox.shared import inline_status, mark_enqueued, utcnow
from cht_interop.delivery.tables import JOB_STATUSES, outbox_attempts, outbox_jobs


class OutboxError(Exception):
    """Base of the outbox's own errors (the CLI and console turn them into messages)."""


class JobNotFound(OutboxError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"no outbox job {job_id}")
        self.job_id = job_id


class JobNotRetryable(OutboxError):
    def __init__(self, job_id: int, status: str) -> None:
        super().__init__(f"outbox job {job_id} is {status}; only a dead job can be retried")
        self.job_id, self.status = job_id, status


class JobNotDiscardable(OutboxError):
    def __init__(self, job_id: int, status: str, why: str) -> None:
        super().__init__(f"outbox job {job_id} is {status}: {why}")
        self.job_id, self.status, self.why = job_id, status, why


MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    worker: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None  # None while running; success | retry | dead | lease-expired
    http_status: int | None
    error: str | None
    note: str | None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as the CLI and console show it."""

    id: int
    notification_id: str
    kind: str
    target: str
    payload: dict[str, Any]
    ordering_key: str | None
    status: str
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime | None
    claimed_by: str | None
    horizon_from: datetime
    created_at: datetime
    updated_at: datetime
    last_error: str | None
    dead_hook: str | None = None  # None (no on_dead hook) | pending | done
    dead_hook_error: str | None = None  # why the hook's last run failed, while it is pending
    attempt_log: list[Attempt] = field(default_factory=list)


async def retry_dead(conn: AsyncConnection, job_id: int, *, now: datetime | None = None) -> JobRecord:
    """Put a dead job back to pending, due now; attempts are kept and its retry horizon restarts."""
    now = now or utcnow()
    j = outbox_jobs
    row = (await conn.execute(select(j.c.status).where(j.c.id == job_id).with_for_update())).first()
    if row is None:
        raise JobNotFound(job_id)
    if row.status != "dead":
        raise JobNotRetryable(job_id, row.status)
    # a hook still pending is dropped: it was for the dead-letter, and the job gets another chance
    await conn.execute(
        update(j)
        .where(j.c.id == job_id)
        .values(
            status="pending",
            next_attempt_at=now,
            horizon_from=now,
            updated_at=now,
            lease_until=None,
            claimed_by=None,
            dead_hook=None,
            dead_hook_error=None,
        )
    )
    await mark_enqueued(conn)
    record = await get_job(conn, job_id)
    assert record is not None
    return record


async def discard(
    conn: AsyncConnection, job_id: int, *, reason: str, by: str, now: datetime | None = None
) -> JobRecord:
    """Give up on a dead or failing job for good: status ``discarded``, which the worker never
    takes and ``retry_dead`` refuses; ``last_error`` says who discarded it and why (its attempts
    keep the errors before). Its kind's dead-letter hook is not run: a person decided, not the
    retry horizon. A job never tried, running, delivered or discarded already is refused."""
    reason = " ".join(reason.split())
    if not reason:
        raise ValueError("a discard needs a reason")
    now = now or utcnow()
    j = outbox_jobs
    row = (
        await conn.execute(
            select(j.c.status, j.c.attempts, j.c.dead_hook).where(j.c.id == job_id).with_for_update()
        )
    ).first()
    if row is None:
        raise JobNotFound(job_id)
    if row.status == "running":
        raise JobNotDiscardable(job_id, row.status, "an attempt is under way; wait until it ends")
    if row.status == "pending" and int(row.attempts) == 0:
        raise JobNotDiscardable(
            job_id, "waiting", "it was never tried; only a dead or failing job is discarded"
        )
    if row.status not in ("pending", "dead"):
        raise JobNotDiscardable(job_id, row.status, "only a dead or failing job can be discarded")
    if row.dead_hook == "pending":
        raise JobNotDiscardable(job_id, row.status, "its failure is still being recorded; try again shortly")
    done = await conn.execute(
        update(j)
        .where(j.c.id == job_id, j.c.status == row.status)
        .values(
            status="discarded",
            last_error=f"discarded by {by}: {reason}"[:MAX_REASON],
            updated_at=now,
            lease_until=None,
            claimed_by=None,
        )
    )
    if done.rowcount != 1:  # a worker took it meanwhile (SQLite has no row lock)
        raise JobNotDiscardable(job_id, "running", "an attempt is under way; wait until it ends")
    record = await get_job(conn, job_id)
    assert record is not None
    return record


def _record(row: Any) -> JobRecord:
    return JobRecord(
        id=int(row.id),
        notification_id=row.notification_id,
        kind=row.kind,
        target=row.target,
        payload=dict(row.payload or {}),
        ordering_key=row.ordering_key,
        status=row.status,
        attempts=int(row.attempts),
        next_attempt_at=row.next_attempt_at,
        lease_until=row.lease_until,
        claimed_by=row.claimed_by,
        horizon_from=row.horizon_from,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_error=row.last_error,
        dead_hook=row.dead_hook,
        dead_hook_error=row.dead_hook_error,
    )


async def get_job(conn: AsyncConnection, job_id: int) -> JobRecord | None:
    """One job with every attempt, oldest first."""
    row = (await conn.execute(select(outbox_jobs).where(outbox_jobs.c.id == job_id))).first()
    if row is None:
        return None
    a = outbox_attempts
    attempts = (await conn.execute(select(a).where(a.c.job_id == job_id).order_by(a.c.number))).all()
    record = _record(row)
    record.attempt_log.extend(
        Attempt(
            number=int(r.number),
            worker=r.worker,
            started_at=r.started_at,
            finished_at=r.finished_at,
            outcome=r.outcome,
            http_status=r.http_status,
            error=r.error,
            note=r.note,
        )
        for r in attempts
    )
    return record


async def list_jobs(
    conn: AsyncConnection,
    *,
    status: str | None = None,
    kind: str | None = None,
    ordering_key: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[JobRecord]:
    """Newest first; page with ``before_id`` (the last id of the previous page)."""
    j = outbox_jobs
    stmt = select(j).order_by(j.c.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(j.c.status == status)
    if kind is not None:
        stmt = stmt.where(j.c.kind == kind)
    if ordering_key is not None:
        stmt = stmt.where(j.c.ordering_key == ordering_key)
    if before_id is not None:
        stmt = stmt.where(j.c.id < before_id)
    return [_record(r) for r in (await conn.execute(stmt)).all()]


async def purge_done(conn: AsyncConnection, *, finished_before: datetime) -> int:
    """Delete delivered jobs (and their attempts) last touched before ``finished_before``.

    Dead jobs are kept: they wait for a person. Returns how many jobs went.
    """
    j, a = outbox_jobs, outbox_attempts
    doomed = select(j.c.id).where(j.c.status == inline_status("done"), j.c.updated_at < finished_before)
    await conn.execute(delete(a).where(a.c.job_id.in_(doomed)))
    result = await conn.execute(delete(j).where(j.c.id.in_(doomed)))
    return int(result.rowcount)


async def count_by_status(conn: AsyncConnection) -> dict[str, int]:
    """How many jobs are in each status (every status present, zero if none)."""
    j = outbox_jobs
    rows = (await conn.execute(select(j.c.status, func.count()).group_by(j.c.status))).all()
    counts = dict.fromkeys(JOB_STATUSES, 0)
    counts.update({r[0]: int(r[1]) for r in rows})
    return counts


async def count_pending_hooks(conn: AsyncConnection) -> int:
    """How many dead jobs still wait for their ``on_dead`` hook to run."""
    j = outbox_jobs
    query = select(func.count()).select_from(j).where(j.c.dead_hook == inline_status("pending"))
    return int((await conn.execute(query)).scalar_one())


async def oldest_pending_created_at(conn: AsyncConnection) -> datetime | None:
    """When the oldest job still waiting for delivery was created (None: none waits)."""
    j = outbox_jobs
    query = select(func.min(j.c.created_at)).where(
        j.c.status.in_([inline_status("pending"), inline_status("running")])
    )
    found: datetime | None = (await conn.execute(query)).scalar()
    return found
