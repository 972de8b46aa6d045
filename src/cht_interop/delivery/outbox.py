"""The outbox repository: enqueue inside the caller's transaction, claim, finish, dead-letter, retry.

Every function takes an ``AsyncConnection`` that is already inside a transaction
(``Database.transaction()``); none of them commits. Jobs written by :func:`enqueue` are therefore
visible to workers only once the caller's business transaction commits, and vanish with it on
rollback.

Claiming (:func:`claim`) locks candidate rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
concurrent workers never take the same job; on SQLite every transaction is ``BEGIN IMMEDIATE`` and
claims are serialised by the database lock. A job is claimable when it is pending and due, or
running with an expired lease (its worker died), and no older job with the same ``ordering_key``
is still pending or running.

A job whose kind has an ``on_dead`` hook is made dead with its hook *pending* (held by the worker
that made it dead, for a lease), and the hook is marked *done* only after it ran: a worker that
stops in between leaves it pending, and any worker knowing the kind runs it after the lease
(:func:`claim_hooks`). Hooks therefore run at least once, and must be safe to run twice.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Dialect,
    String,
    Text,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db.driver import Driver
from cht_interop.db.types import UtcDateTime
from cht_interop.delivery.jobs import NewJob
from cht_interop.delivery.registry import Job
from cht_interop.delivery.tables import (
    HOOK_STATUSES,
    JOB_STATUSES,
    outbox_attempts,
    outbox_jobs,
)

MAX_TEXT = 2000
ACTIVE = ("pending", "running")
# set on a connection by enqueue(); the worker's commit hook wakes it when that transaction commits
ENQUEUED_FLAG = "cht_interop.outbox.enqueued"


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


def utcnow() -> datetime:
    return datetime.now(UTC)


def clip(text: str | None, limit: int = MAX_TEXT) -> str | None:
    """Cut stored text to about 2 kB so a chatty peer cannot bloat the table."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


_ENQUEUE_ROWS = 500  # jobs per INSERT (9 parameters each)


async def enqueue(conn: AsyncConnection, jobs: Sequence[NewJob], *, now: datetime | None = None) -> list[int]:
    """Add ``jobs`` in the caller's transaction; returns their ids in the order given.

    One multi-row INSERT … RETURNING per 500 jobs, so thousands of jobs cost a few round trips.
    Workers see them only after the caller commits. Sent on the driver (``cht_interop.db.driver``)
    with the column types' own bind processing applied by hand: the timestamps are one value for
    every row, so they are processed once; Core's per-row, per-column binding and its async
    adaptation cost more than the insert itself.
    """
    if not jobs:
        return []
    now = now or utcnow()
    dialect = conn.dialect
    stamp = _bind(outbox_jobs.c.created_at, dialect)(now)
    payload = _bind(outbox_jobs.c.payload, dialect)
    randoms = os.urandom(16 * len(jobs))  # one system call for every notification id
    notification_ids = [
        str(uuid.UUID(bytes=randoms[16 * i : 16 * i + 16], version=4)) for i in range(len(jobs))
    ]
    driver = await Driver.of(conn)
    by_notification: dict[str, int] = {}
    for start in range(0, len(jobs), _ENQUEUE_ROWS):
        chunk = range(start, min(len(jobs), start + _ENQUEUE_ROWS))
        params: list[Any] = []
        for i in chunk:
            job = jobs[i]
            params += (notification_ids[i], job.kind, job.target, payload(dict(job.payload)))
            params += (job.ordering_key, stamp, stamp, stamp, stamp)
        # RETURNING rows matched back by notification_id: their order is not promised
        found = await driver.fetchall(
            f"INSERT INTO outbox_jobs ({_ENQUEUE_COLUMNS}) VALUES {', '.join([_ENQUEUE_ROW] * len(chunk))} "
            "RETURNING id, notification_id",
            tuple(params),
        )
        by_notification.update((str(nid), int(job_id)) for job_id, nid in found)
    conn.info[ENQUEUED_FLAG] = True
    return [by_notification[nid] for nid in notification_ids]


_ENQUEUE_ROW = "(?, ?, ?, ?, ?, 'pending', 0, ?, NULL, NULL, ?, ?, ?, NULL)"
_ENQUEUE_COLUMNS = (
    "notification_id, kind, target, payload, ordering_key, status, attempts, next_attempt_at, "
    "lease_until, claimed_by, horizon_from, created_at, updated_at, last_error"
)


def _bind(column: Column[Any], dialect: Dialect) -> Callable[[Any], Any]:
    """The column type's bind processing on ``dialect`` (identity when it has none)."""
    processor = column.type.dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)


def _inline(status: str) -> ColumnElement[str]:
    """A status written into the SQL text, not bound: SQLite uses a partial index only when the
    query's WHERE literally implies the index's WHERE, which a bound parameter never does."""
    assert status in JOB_STATUSES or status in HOOK_STATUSES
    return literal_column(f"'{status}'", String())


def _to_job(row: Any, *, attempts_before: int) -> Job:
    return Job(
        id=int(row.id),
        kind=row.kind,
        target=row.target,
        payload=dict(row.payload or {}),
        ordering_key=row.ordering_key,
        attempts=attempts_before,
        created_at=row.created_at,
        notification_id=row.notification_id,
    )


async def claim(
    conn: AsyncConnection,
    *,
    kinds: Iterable[str],
    worker_id: str,
    lease_seconds: float,
    limit: int = 10,
    now: datetime | None = None,
) -> list[Job]:
    """Take up to ``limit`` claimable jobs of ``kinds`` for ``worker_id`` until the lease ends.

    At most one job per ordering key is returned (the oldest active one), so the caller may run
    every returned job concurrently. Each claim opens an attempt record. ``Job.attempts`` counts
    the attempts made before this one.
    """
    kinds = list(kinds)
    if not kinds or limit <= 0:
        return []
    now = now or utcnow()
    j = outbox_jobs
    older = outbox_jobs.alias("older")
    blocked = exists().where(
        older.c.ordering_key == j.c.ordering_key,
        older.c.id < j.c.id,
        older.c.status.in_([_inline(v) for v in ACTIVE]),
    )
    claimable = (j.c.kind.in_(kinds), or_(j.c.ordering_key.is_(None), ~blocked))
    # two index-friendly queries rather than one OR: expired leases (rare), then due pending jobs
    # in due order (FIFO inside a key is the NOT EXISTS above, whatever the global order)
    expired = (
        select(j.c.id, j.c.status)
        .where(j.c.status == _inline("running"), j.c.lease_until < now, *claimable)
        .order_by(j.c.lease_until, j.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=j)
        .with_hint(j, "INDEXED BY ix_outbox_jobs_lease", "sqlite")
    )
    found = list((await conn.execute(expired)).all())
    if len(found) < limit:
        due = (
            select(j.c.id, j.c.status)
            .where(j.c.status == _inline("pending"), j.c.next_attempt_at <= now, *claimable)
            .order_by(j.c.next_attempt_at, j.c.id)
            .limit(limit - len(found))
            .with_for_update(skip_locked=True, of=j)
            # walk the due index in order and stop at the limit, instead of sorting every pending row
            .with_hint(j, "INDEXED BY ix_outbox_jobs_due", "sqlite")
        )
        found.extend((await conn.execute(due)).all())
    if not found:
        return []
    ids = [int(r.id) for r in found]
    reclaimed = [int(r.id) for r in found if r.status == "running"]
    if reclaimed:
        await conn.execute(
            update(outbox_attempts)
            .where(outbox_attempts.c.job_id.in_(reclaimed), outbox_attempts.c.finished_at.is_(None))
            .values(
                finished_at=now,
                outcome="lease-expired",
                error="the worker's lease expired before it reported (stopped or too slow)",
            )
        )
    result = (
        await conn.execute(
            update(j)
            .where(j.c.id.in_(ids))
            .values(
                status="running",
                attempts=j.c.attempts + 1,
                lease_until=now + timedelta(seconds=lease_seconds),
                claimed_by=worker_id,
                updated_at=now,
            )
            .returning(*j.c)
        )
    ).all()
    claimed = sorted(result, key=lambda r: int(r.id))
    await conn.execute(
        insert(outbox_attempts),
        [
            {"job_id": int(r.id), "number": int(r.attempts), "worker": worker_id, "started_at": now}
            for r in claimed
        ],
    )
    return [_to_job(r, attempts_before=int(r.attempts) - 1) for r in claimed]


@dataclass(frozen=True, slots=True)
class Finish:
    """How one claimed attempt ended, for :func:`finish_many`.

    ``status``: done, pending (retry at ``next_attempt_at``) or dead; ``outcome`` is what the
    attempt record says (success, retry, dead). ``hook_until``, for a dead job whose kind has an
    ``on_dead`` hook: the hook is pending, held by this worker (which runs it next) until then.
    """

    job: Job
    status: str
    outcome: str
    http_status: int | None = None
    error: str | None = None
    note: str | None = None
    next_attempt_at: datetime | None = None
    hook_until: datetime | None = None


async def finish_many(
    conn: AsyncConnection, finishes: Sequence[Finish], *, worker_id: str, now: datetime | None = None
) -> set[int]:
    """Record a batch of finished attempts in three statements; returns the ids written.

    A job is written only if this worker still holds that very attempt (same worker, same
    attempt number, still running): if its lease expired and another worker took it over, the
    late result is dropped; the delivery may then happen twice, under one notification id.
    """
    if not finishes:
        return set()
    now = now or utcnow()
    j, a = outbox_jobs, outbox_attempts
    wanted = {f.job.id: f.job.attempts + 1 for f in finishes}
    held = await conn.execute(
        select(j.c.id, j.c.attempts)
        .where(j.c.id.in_(list(wanted)), j.c.status == "running", j.c.claimed_by == worker_id)
        .with_for_update()
    )
    owned = {int(r.id) for r in held if wanted.get(int(r.id)) == int(r.attempts)}
    mine = [f for f in finishes if f.job.id in owned]
    if not mine:
        return set()
    await conn.execute(
        update(j)
        .where(j.c.id == bindparam("b_id"))
        .values(
            status=bindparam("b_status"),
            claimed_by=bindparam("b_claimed", type_=String()),
            lease_until=bindparam("b_lease", type_=UtcDateTime()),
            updated_at=now,
            next_attempt_at=func.coalesce(bindparam("b_next", type_=UtcDateTime()), j.c.next_attempt_at),
            last_error=func.coalesce(bindparam("b_error", type_=Text()), j.c.last_error),
            # dead with a hook: pending in this very write, so no crash can lose it
            dead_hook=bindparam("b_hook", type_=String()),
            dead_hook_error=None,
        ),
        [
            {
                "b_id": f.job.id,
                "b_status": f.status,
                "b_claimed": worker_id if _hooked(f) else None,
                "b_lease": f.hook_until if _hooked(f) else None,
                "b_next": f.next_attempt_at if f.status == "pending" else None,
                "b_error": clip(f.error) if f.status != "done" else None,
                "b_hook": "pending" if _hooked(f) else None,
            }
            for f in mine
        ],
    )
    await conn.execute(
        update(a)
        .where(a.c.job_id == bindparam("b_job"), a.c.number == bindparam("b_number"))
        .values(
            finished_at=now,
            outcome=bindparam("b_outcome"),
            http_status=bindparam("b_http"),
            error=bindparam("b_err"),
            note=bindparam("b_note"),
        ),
        [
            {
                "b_job": f.job.id,
                "b_number": f.job.attempts + 1,
                "b_outcome": f.outcome,
                "b_http": f.http_status,
                "b_err": clip(f.error),
                "b_note": clip(f.note),
            }
            for f in mine
        ],
    )
    return owned


def _hooked(finish: Finish) -> bool:
    return finish.status == "dead" and finish.hook_until is not None


async def _finish(conn: AsyncConnection, finish: Finish, *, worker_id: str, now: datetime | None) -> bool:
    return finish.job.id in await finish_many(conn, [finish], worker_id=worker_id, now=now)


async def complete(
    conn: AsyncConnection,
    job: Job,
    *,
    worker_id: str,
    http_status: int | None = None,
    note: str | None = None,
    now: datetime | None = None,
) -> bool:
    """The job was delivered. False if this worker no longer held it (nothing changed)."""
    return await _finish(
        conn, Finish(job, "done", "success", http_status=http_status, note=note), worker_id=worker_id, now=now
    )


async def reschedule(
    conn: AsyncConnection,
    job: Job,
    *,
    worker_id: str,
    next_attempt_at: datetime,
    error: str,
    http_status: int | None = None,
    now: datetime | None = None,
) -> bool:
    """The attempt failed transiently: back to pending until ``next_attempt_at``."""
    finish = Finish(
        job, "pending", "retry", http_status=http_status, error=error, next_attempt_at=next_attempt_at
    )
    return await _finish(conn, finish, worker_id=worker_id, now=now)


async def dead_letter(
    conn: AsyncConnection,
    job: Job,
    *,
    worker_id: str,
    reason: str,
    http_status: int | None = None,
    hook_until: datetime | None = None,
    now: datetime | None = None,
) -> bool:
    """Give up on the job (permanent failure or horizon passed); it waits for a retry by hand.

    With ``hook_until`` its ``on_dead`` hook is left pending, held by ``worker_id`` until then."""
    finish = Finish(job, "dead", "dead", http_status=http_status, error=reason, hook_until=hook_until)
    return await _finish(conn, finish, worker_id=worker_id, now=now)


async def claim_hooks(
    conn: AsyncConnection,
    *,
    kinds: Iterable[str],
    worker_id: str,
    lease_seconds: float,
    limit: int = 10,
    now: datetime | None = None,
) -> list[tuple[Job, str]]:
    """Take up to ``limit`` dead jobs of ``kinds`` whose ``on_dead`` hook is still pending and not
    held (its worker stopped before marking it done, or it failed and its retry time has come).

    Returns each job with the reason it died (its last error), the reason the hook is given.
    """
    kinds = list(kinds)
    if not kinds or limit <= 0:
        return []
    now = now or utcnow()
    j = outbox_jobs
    found = (
        await conn.execute(
            select(j.c.id)
            .where(
                j.c.dead_hook == _inline("pending"),
                j.c.status == _inline("dead"),
                j.c.kind.in_(kinds),
                or_(j.c.lease_until.is_(None), j.c.lease_until <= now),
            )
            .order_by(j.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=j)
        )
    ).all()
    if not found:
        return []
    rows = (
        await conn.execute(
            update(j)
            .where(j.c.id.in_([int(r.id) for r in found]))
            .values(claimed_by=worker_id, lease_until=now + timedelta(seconds=lease_seconds))
            .returning(*j.c)
        )
    ).all()
    return [
        (_to_job(r, attempts_before=max(int(r.attempts) - 1, 0)), r.last_error or "failed")
        for r in sorted(rows, key=lambda r: int(r.id))
    ]


@dataclass(frozen=True, slots=True)
class HookRun:
    """How one run of an ``on_dead`` hook ended, for :func:`finish_hooks` (``error`` None: it ran)."""

    job_id: int
    error: str | None = None


async def finish_hooks(
    conn: AsyncConnection,
    runs: Sequence[HookRun],
    *,
    worker_id: str,
    retry_at: datetime,
    now: datetime | None = None,
) -> None:
    """Record hook runs: done, or (failed) left pending for any worker to run again at ``retry_at``.

    A hook that ran is done whoever holds it now (hooks are safe to run twice); a failure is
    written only while this worker still holds the hook. A job retried by hand meanwhile (no
    longer dead) is left alone.
    """
    now = now or utcnow()
    j = outbox_jobs
    pending = (j.c.status == _inline("dead"), j.c.dead_hook == _inline("pending"))
    ran = [r.job_id for r in runs if r.error is None]
    failed = [r for r in runs if r.error is not None]
    if ran:
        await conn.execute(
            update(j)
            .where(j.c.id.in_(ran), *pending)
            .values(dead_hook="done", dead_hook_error=None, claimed_by=None, lease_until=None, updated_at=now)
        )
    if failed:
        await conn.execute(
            update(j)
            .where(j.c.id == bindparam("b_id"), j.c.claimed_by == worker_id, *pending)
            .values(
                dead_hook_error=bindparam("b_error", type_=Text()),
                claimed_by=None,
                lease_until=retry_at,
                updated_at=now,
            ),
            [{"b_id": r.job_id, "b_error": clip(r.error)} for r in failed],
        )


async def horizons(conn: AsyncConnection, job_ids: Sequence[int]) -> dict[int, datetime]:
    """When each job's retry horizon started (creation, or its last retry by hand)."""
    if not job_ids:
        return {}
    j = outbox_jobs
    rows = await conn.execute(select(j.c.id, j.c.horizon_from).where(j.c.id.in_(list(job_ids))))
    return {int(r.id): r.horizon_from for r in rows}


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
    conn.info[ENQUEUED_FLAG] = True
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
    doomed = select(j.c.id).where(j.c.status == _inline("done"), j.c.updated_at < finished_before)
    await conn.execute(delete(a).where(a.c.job_id.in_(doomed)))
    result = await conn.execute(delete(j).where(j.c.id.in_(doomed)))
    return int(result.rowcount)


async def count_by_status(conn: AsyncConnection) -> dict[str, int]:
    """How many jobs are in each status (every status present, zero if none)."""
    j = outbox_jobs
    rows = (await conn.execute(select(j.c.status, func.count()).group_by(j.c.status))).all()
    counts = dict.fromkeys(("pending", "running", "done", "dead"), 0)
    counts.update({r[0]: int(r[1]) for r in rows})
    return counts


async def count_pending_hooks(conn: AsyncConnection) -> int:
    """How many dead jobs still wait for their ``on_dead`` hook to run."""
    j = outbox_jobs
    query = select(func.count()).select_from(j).where(j.c.dead_hook == _inline("pending"))
    return int((await conn.execute(query)).scalar_one())
