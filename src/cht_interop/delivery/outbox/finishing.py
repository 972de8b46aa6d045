"""Recording how claimed attempts ended (done, retry later, dead) and how ``on_dead`` hooks ran.

A result is written only while the worker still holds the attempt it reports on: a late result
from a worker whose lease expired is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Text, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db.driver import Driver, markers
from cht_interop.delivery.outbox.shared import bind, clip, inline_status, utcnow
from cht_interop.delivery.registry import Job
from cht_interop.delivery.tables import outbox_jobs


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
    Sent on the driver (``cht_interop.db.driver``), the timestamps bound as Core binds them: the
    worker records every cycle's results here, and through Core's async adaptation each
    statement was four hops into aiosqlite's thread where the driver makes one.
    """
    if not finishes:
        return set()
    now = now or utcnow()
    stamp = bind(outbox_jobs.c.updated_at, conn.dialect)
    driver = await Driver.of(conn)
    wanted = {f.job.id: f.job.attempts + 1 for f in finishes}
    ids = list(wanted)
    held = await driver.fetchall(
        f"SELECT id, attempts FROM outbox_jobs WHERE id IN ({markers(len(ids))}) "
        "AND status = 'running' AND claimed_by = ?" + ("" if driver.sqlite else " FOR UPDATE"),
        (*ids, worker_id),
    )
    owned = {int(job_id) for job_id, attempts in held if wanted.get(int(job_id)) == int(attempts)}
    mine = [f for f in finishes if f.job.id in owned]
    if not mine:
        return set()
    at = stamp(now)
    await driver.executemany(
        _FINISH_JOB_SQL,
        [
            (
                f.status,
                worker_id if _hooked(f) else None,
                stamp(f.hook_until) if _hooked(f) else None,
                at,
                stamp(f.next_attempt_at) if f.status == "pending" else None,
                clip(f.error) if f.status != "done" else None,
                # dead with a hook: pending in this very write, so no crash can lose it
                "pending" if _hooked(f) else None,
                f.job.id,
            )
            for f in mine
        ],
    )
    await driver.executemany(
        _FINISH_ATTEMPT_SQL,
        [
            (at, f.outcome, f.http_status, clip(f.error), clip(f.note), f.job.id, f.job.attempts + 1)
            for f in mine
        ],
    )
    return owned


_FINISH_JOB_SQL = (
    "UPDATE outbox_jobs SET status = ?, claimed_by = ?, lease_until = ?, updated_at = ?, "
    "next_attempt_at = COALESCE(?, next_attempt_at), last_error = COALESCE(?, last_error), "
    "dead_hook = ?, dead_hook_error = NULL WHERE id = ?"
)
_FINISH_ATTEMPT_SQL = (
    "UPDATE outbox_attempts SET finished_at = ?, outcome = ?, http_status = ?, error = ?, note = ? "
    "WHERE job_id = ? AND number = ?"
)


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
    pending = (j.c.status == inline_status("dead"), j.c.dead_hook == inline_status("pending"))
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
