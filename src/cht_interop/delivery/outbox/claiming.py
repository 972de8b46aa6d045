"""Taking jobs for a worker, under a lease: due jobs (or ones whose worker's lease expired), and
dead jobs whose ``on_dead`` hook is still pending.

PostgreSQL locks candidate rows with ``FOR UPDATE SKIP LOCKED``, so concurrent workers never take
the same job; on SQLite every transaction is ``BEGIN IMMEDIATE`` and claims are serialised by the
database lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db.driver import Driver, markers
from cht_interop.delivery.outbox.shared import bind, inline_status, job_from_row, result, utcnow
from cht_interop.delivery.registry import Job
from cht_interop.delivery.tables import outbox_jobs


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
    the attempts made before this one. Sent on the driver (``cht_interop.db.driver``) with the
    columns' own bind and result processing, as :func:`~.finishing.finish_many`: the worker
    claims every cycle, and each Core statement was four hops into aiosqlite's thread.
    """
    kinds = list(kinds)
    if not kinds or limit <= 0:
        return []
    now = now or utcnow()
    dialect = conn.dialect
    stamp = bind(outbox_jobs.c.updated_at, dialect)
    driver = await Driver.of(conn)
    at = stamp(now)
    lock = "" if driver.sqlite else " FOR UPDATE OF outbox_jobs SKIP LOCKED"
    claimable = (
        f"outbox_jobs.kind IN ({markers(len(kinds))}) AND (outbox_jobs.ordering_key IS NULL OR NOT EXISTS "
        "(SELECT 1 FROM outbox_jobs AS older WHERE older.ordering_key = outbox_jobs.ordering_key "
        "AND older.id < outbox_jobs.id AND older.status IN ('pending', 'running')))"
    )
    # two index-friendly queries rather than one OR: expired leases (rare), then due pending jobs
    # in due order (FIFO inside a key is the NOT EXISTS above, whatever the global order)
    found = await driver.fetchall(
        "SELECT outbox_jobs.id, outbox_jobs.status FROM outbox_jobs WHERE outbox_jobs.status = 'running' "
        f"AND outbox_jobs.lease_until < ? AND {claimable} "
        f"ORDER BY outbox_jobs.lease_until, outbox_jobs.id LIMIT ?{lock}",
        (at, *kinds, limit),
    )
    if len(found) < limit:
        found += await driver.fetchall(
            "SELECT outbox_jobs.id, outbox_jobs.status FROM outbox_jobs WHERE outbox_jobs.status = 'pending' "
            f"AND outbox_jobs.next_attempt_at <= ? AND {claimable} "
            f"ORDER BY outbox_jobs.next_attempt_at, outbox_jobs.id LIMIT ?{lock}",
            (at, *kinds, limit - len(found)),
        )
    if not found:
        return []
    ids = [int(job_id) for job_id, _ in found]
    reclaimed = [int(job_id) for job_id, status in found if status == "running"]
    if reclaimed:
        await driver.execute(
            "UPDATE outbox_attempts SET finished_at = ?, outcome = 'lease-expired', error = ? "
            f"WHERE job_id IN ({markers(len(reclaimed))}) AND finished_at IS NULL",
            (at, "the worker's lease expired before it reported (stopped or too slow)", *reclaimed),
        )
    rows = await driver.fetchall(
        "UPDATE outbox_jobs SET status = 'running', attempts = attempts + 1, lease_until = ?, "
        f"claimed_by = ?, updated_at = ? WHERE id IN ({markers(len(ids))}) RETURNING {_JOB_COLUMNS}",
        (stamp(now + timedelta(seconds=lease_seconds)), worker_id, at, *ids),
    )
    rows.sort(key=lambda r: int(r[0]))
    await driver.executemany(
        "INSERT INTO outbox_attempts (job_id, number, worker, started_at) VALUES (?, ?, ?, ?)",
        [(int(r[0]), int(r[5]), worker_id, at) for r in rows],
    )
    payload = result(outbox_jobs.c.payload, dialect)
    created = result(outbox_jobs.c.created_at, dialect)
    return [
        Job(
            id=int(job_id),
            kind=kind,
            target=target,
            payload=dict(payload(raw_payload) or {}),
            ordering_key=ordering_key,
            attempts=int(attempts) - 1,
            created_at=created(created_at),
            notification_id=notification_id,
        )
        for job_id, kind, target, raw_payload, ordering_key, attempts, created_at, notification_id in rows
    ]


_JOB_COLUMNS = "id, kind, target, payload, ordering_key, attempts, created_at, notification_id"


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
