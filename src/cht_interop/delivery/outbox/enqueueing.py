"""Adding jobs, inside the caller's business transaction (visible to workers once it commits)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db.driver import Driver
from cht_interop.delivery.jobs import NewJob
from cht_interop.delivery.outbox.shared import bind, mark_enqueued, utcnow
from cht_interop.delivery.tables import outbox_jobs

_ENQUEUE_ROWS = 500  # jobs per INSERT (9 parameters each)


async def enqueue(conn: AsyncConnection, jobs: Sequence[NewJob], *, now: datetime | None = None) -> list[int]:
    """Add ``jobs`` in the caller's transaction; returns their ids in the order given.

    One multi-row INSERT … RETURNING per 500 jobs, so thousands of jobs cost a few round trips.
    Workers see them only after the caller commits. Sent on the driver (``cht_interop.db.driver``)
    with the column types' own bind processing applied by hand: the timestamps are one value for
    every row, so they are processed once; Core's per-row, per-column binding and its async
    adaptation cost more than the insert itself. A job with its own ``due`` is stamped with it
    instead of ``now`` (as ``enqueue(…, now=due)`` would: due then, its horizon counted from then).
    """
    if not jobs:
        return []
    now = now or utcnow()
    dialect = conn.dialect
    created = bind(outbox_jobs.c.created_at, dialect)
    stamp = created(now)
    payload = bind(outbox_jobs.c.payload, dialect)
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
            at = stamp if job.due is None else created(job.due)
            params += (job.ordering_key, at, at, at, at)
        # RETURNING rows matched back by notification_id: their order is not promised
        found = await driver.fetchall(
            f"INSERT INTO outbox_jobs ({_ENQUEUE_COLUMNS}) VALUES {', '.join([_ENQUEUE_ROW] * len(chunk))} "
            "RETURNING id, notification_id",
            tuple(params),
        )
        by_notification.update((str(nid), int(job_id)) for job_id, nid in found)
    await mark_enqueued(conn)
    return [by_notification[nid] for nid in notification_ids]


async def make_due(conn: AsyncConnection, job_ids: Sequence[int], *, now: datetime | None = None) -> None:
    """Make these jobs, enqueued due later, due now (those still pending; their retry horizon
    counts from now): a job held back until the rest of its work is in, with its due time as the
    deadline should that never come (e.g. a long list's write jobs, ``ltfu/staged_lists.py``)."""
    if not job_ids:
        return
    now = now or utcnow()
    j = outbox_jobs
    for start in range(0, len(job_ids), _ENQUEUE_ROWS):
        await conn.execute(
            update(j)
            .where(j.c.id.in_(list(job_ids[start : start + _ENQUEUE_ROWS])), j.c.status == "pending")
            .values(next_attempt_at=now, horizon_from=now, updated_at=now)
        )
    await mark_enqueued(conn)


_ENQUEUE_ROW = "(?, ?, ?, ?, ?, 'pending', 0, ?, NULL, NULL, ?, ?, ?, NULL)"
_ENQUEUE_COLUMNS = (
    "notification_id, kind, target, payload, ordering_key, status, attempts, next_attempt_at, "
    "lease_until, claimed_by, horizon_from, created_at, updated_at, last_error"
)
