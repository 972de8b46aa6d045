"""Taking jobs for a worker, under a lease: due jobs (or ones whose worker's lease expired), and
dead jobs whose ``on_dead`` hook is still pending.

PostgreSQL locks candidate rows with ``FOR UPDATE SKIP LOCKED``, so concurrent workers never take
the same job; on SQLite every transaction is ``BEGIN IMMEDIATE`` and claims are serialised by the
database lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import exists, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.delivery.outbox.shared import ACTIVE, inline_status, job_from_row, utcnow
from cht_interop.delivery.registry import Job
from cht_interop.delivery.tables import outbox_attempts, outbox_jobs


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
        older.c.status.in_([inline_status(v) for v in ACTIVE]),
    )
    claimable = (j.c.kind.in_(kinds), or_(j.c.ordering_key.is_(None), ~blocked))
    # two index-friendly queries rather than one OR: expired leases (rare), then due pending jobs
    # in due order (FIFO inside a key is the NOT EXISTS above, whatever the global order)
    expired = (
        select(j.c.id, j.c.status)
        .where(j.c.status == inline_status("running"), j.c.lease_until < now, *claimable)
        .order_by(j.c.lease_until, j.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=j)
        .with_hint(j, "INDEXED BY ix_outbox_jobs_lease", "sqlite")
    )
    found = list((await conn.execute(expired)).all())
    if len(found) < limit:
        due = (
            select(j.c.id, j.c.status)
            .where(j.c.status == inline_status("pending"), j.c.next_attempt_at <= now, *claimable)
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
    return [job_from_row(r, attempts_before=int(r.attempts) - 1) for r in claimed]


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
                j.c.dead_hook == inline_status("pending"),
                j.c.status == inline_status("dead"),
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
        (job_from_row(r, attempts_before=max(int(r.attempts) - 1, 0)), r.last_error or "failed")
        for r in sorted(rows, key=lambda r: int(r.id))
    ]
