"""Read-only queries the console needs and the domains do not offer: outbox views and LTFU lists.

Everything here only reads, through the domains' public Table objects; every write the console
makes goes through the owning domain's functions (``delivery.outbox.retry_dead``, ``purge_done``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.delivery import outbox
from cht_interop.delivery.outbox.shared import inline_status
from cht_interop.delivery.tables import outbox_jobs
from cht_interop.ltfu.tables import ltfu_list, ltfu_list_entry

# What the Deliveries page shows, tab by tab: (label, what it means)
DELIVERY_VIEWS: dict[str, tuple[str, str]] = {
    "failing": ("Failing", "tried and failed at least once; retried automatically until the horizon"),
    "pending": ("Waiting", "not tried yet: due now, scheduled for later, or being delivered"),
    "dead": ("Dead letters", "given up: wait for a retry by hand"),
    "done": ("Delivered", "delivered; purged after a while"),
    "discarded": ("Discarded", "given up by an administrator, with the reason: never tried again"),
}


@dataclass(frozen=True, slots=True)
class Backlog:
    counts: dict[str, int]  # by status, every status present
    failing: int  # pending jobs already tried at least once (retried automatically)
    scheduled: int  # pending jobs not tried yet whose time has not come (e.g. expiry checks)
    oldest_due: outbox.JobRecord | None  # the oldest job due now or being delivered
    hooks_pending: int

    @property
    def waiting(self) -> int:
        """Not tried yet, due now or later, or being delivered (the Deliveries page's "Waiting")."""
        return self.counts["pending"] + self.counts["running"] - self.failing


async def backlog(conn: AsyncConnection, *, now: datetime | None = None) -> Backlog:
    """The outbox at a glance (each count uses the (status, id) index or a partial index)."""
    j = outbox_jobs
    now = now or outbox.utcnow()
    pending, running = inline_status("pending"), inline_status("running")
    counts = await outbox.count_by_status(conn)
    failing = await conn.scalar(
        select(func.count()).select_from(j).where(j.c.status == pending, j.c.attempts > 0)
    )
    scheduled = await conn.scalar(
        select(func.count())
        .select_from(j)
        .where(j.c.status == pending, j.c.next_attempt_at > now, j.c.attempts == 0)
    )
    due_ids = [
        await conn.scalar(select(func.min(j.c.id)).where(j.c.status == pending, j.c.next_attempt_at <= now)),
        await conn.scalar(select(func.min(j.c.id)).where(j.c.status == running)),
    ]
    oldest_id = min((int(i) for i in due_ids if i is not None), default=None)
    oldest = await outbox.get_job(conn, oldest_id) if oldest_id is not None else None
    return Backlog(
        counts, int(failing or 0), int(scheduled or 0), oldest, await outbox.count_pending_hooks(conn)
    )


async def deliveries(
    conn: AsyncConnection, view: str, *, before_id: int | None, limit: int
) -> list[outbox.JobRecord]:
    """One tab of the Deliveries page, newest first, keyset-paged by id."""
    if view == "pending":
        return [
            r
            for r in await _jobs(conn, ("pending", "running"), before_id=before_id, limit=limit)
            if not (r.status == "pending" and r.attempts > 0)
        ]
    if view == "failing":
        return await _jobs(conn, ("pending",), before_id=before_id, limit=limit, tried=True)
    return await outbox.list_jobs(conn, status=view, before_id=before_id, limit=limit)


async def _jobs(
    conn: AsyncConnection,
    statuses: tuple[str, ...],
    *,
    before_id: int | None,
    limit: int,
    tried: bool = False,
) -> list[outbox.JobRecord]:
    j = outbox_jobs
    stmt = select(j.c.id).where(j.c.status.in_(statuses)).order_by(j.c.id.desc()).limit(limit)
    if tried:
        stmt = stmt.where(j.c.attempts > 0)
    if before_id is not None:
        stmt = stmt.where(j.c.id < before_id)
    ids = [int(i) for i in (await conn.scalars(stmt)).all()]
    found = [await outbox.get_job(conn, i) for i in ids]
    return [r for r in found if r is not None]


async def jobs_for_keys(conn: AsyncConnection, ordering_keys: list[str]) -> list[outbox.JobRecord]:
    """Every job (with its attempts) under these ordering keys, oldest first: a follow-up's timeline."""
    records: list[outbox.JobRecord] = []
    for key in ordering_keys:
        for listed in await outbox.list_jobs(conn, ordering_key=key, limit=200):
            full = await outbox.get_job(conn, listed.id)
            if full is not None:
                records.append(full)
    return sorted(records, key=lambda r: r.id)


# -- LTFU lists ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListSummary:
    id: str
    received_at: datetime
    entry_count: int
    staged_count: int
    written: int
    done_at: datetime | None


async def ltfu_lists(conn: AsyncConnection, *, before: datetime | None, limit: int) -> list[ListSummary]:
    """Staged LTFU lists, newest first, with how many of their staged entries are written."""
    lst, e = ltfu_list, ltfu_list_entry
    stmt = (
        select(lst)
        .where(lst.c.staging.is_(False))  # a list counts once closed (its last turn staged)
        .order_by(lst.c.received_at.desc(), lst.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        stmt = stmt.where(lst.c.received_at < before)
    rows = (await conn.execute(stmt)).all()
    out = []
    for row in rows:
        staged_left = await conn.scalar(
            select(func.count()).select_from(e).where(e.c.list_id == row.id, e.c.state == "staged")
        )
        out.append(
            ListSummary(
                row.id,
                row.received_at,
                int(row.entry_count),
                int(row.staged_count),
                int(row.staged_count) - int(staged_left or 0),
                row.done_at,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class ListEntry:
    position: int
    state: str
    follow_up_id: str | None
    status: str | None  # the batch-response entry's status ("201 Created", "400 Bad Request"…)
    location: str | None
    problem: str | None  # the OperationOutcome's diagnostics, for a refused entry


async def ltfu_list_entries(
    conn: AsyncConnection, list_id: str, *, after_position: int, limit: int
) -> tuple[ListSummary | None, list[ListEntry]]:
    """One list's header and one page of its entries, in list order."""
    lst, e = ltfu_list, ltfu_list_entry
    row = (await conn.execute(select(lst).where(lst.c.id == list_id, lst.c.staging.is_(False)))).first()
    if row is None:
        return None, []
    staged_left = await conn.scalar(
        select(func.count()).select_from(e).where(e.c.list_id == list_id, e.c.state == "staged")
    )
    header = ListSummary(
        row.id,
        row.received_at,
        int(row.entry_count),
        int(row.staged_count),
        int(row.staged_count) - int(staged_left or 0),
        row.done_at,
    )
    rows = await conn.execute(
        select(e.c.position, e.c.state, e.c.follow_up_id, e.c.response)
        .where(e.c.list_id == list_id, e.c.position > after_position)
        .order_by(e.c.position)
        .limit(limit)
    )
    return header, [_entry(r) for r in rows]


def _entry(row: Any) -> ListEntry:
    answer: dict[str, Any] = orjson.loads(row.response) if row.response else {}
    response = answer.get("response") or {}
    problem = None
    issues = ((response.get("outcome") or {}).get("issue")) or []
    if issues and isinstance(issues[0], dict):
        problem = issues[0].get("diagnostics")
    return ListEntry(
        int(row.position),
        row.state,
        row.follow_up_id,
        response.get("status"),
        response.get("location"),
        problem,
    )
