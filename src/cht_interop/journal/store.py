"""Every statement on the journal's tables: the writer's insert, the retention purge, and the
queries the console reads (a filtered list with keyset paging, one entry with its orchestrations,
a follow-up's timeline)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Dialect, Select, and_, delete, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db.driver import Driver
from cht_interop.journal.entries import Row
from cht_interop.journal.tables import journal_entries as E
from cht_interop.journal.tables import journal_refs as R

PURGE_CHUNK = 5000
MAX_PAGE = 500
_SUMMARY = [
    E.c.id,
    E.c.transaction_id,
    E.c.kind,
    E.c.started_at,
    E.c.duration_ms,
    E.c.client,
    E.c.method,
    E.c.path,
    E.c.query,
    E.c.status,
    E.c.outcome,
    E.c.error,
    E.c.follow_up_id,
    E.c.job_id,
    E.c.attempt,
    E.c.target,
    E.c.properties,
]
_DETAIL = [*_SUMMARY, E.c.request_body, E.c.response_body, E.c.orchestrations]


@dataclass
class Entry:
    """One journal row; ``orchestrations`` and the bodies are filled by ``get_entry``/``timeline``."""

    id: str
    transaction_id: str
    kind: str
    started_at: datetime
    duration_ms: float
    client: str | None
    method: str | None
    path: str
    query: str | None
    status: int | None
    outcome: str
    error: str | None
    follow_up_id: str | None
    job_id: int | None
    attempt: int | None
    target: str | None
    properties: dict[str, Any]
    request_body: str | None = None
    response_body: str | None = None
    orchestrations: list[dict[str, Any]] = field(default_factory=list)
    # a job attempt's: the request that started what it serves (its OpenHIM transaction id, if routed)
    origin_transaction_id: str | None = None

    @property
    def cursor(self) -> str:
        """Where the next page starts (pass as ``after``)."""
        return f"{self.started_at.isoformat()}|{self.id}"


@dataclass(frozen=True)
class Filters:
    """What the console's list narrows by; every field optional."""

    since: datetime | None = None
    until: datetime | None = None
    status: int | None = None  # an exact HTTP status
    status_class: int | None = None  # 2, 4, 5: any 2xx, 4xx, 5xx
    path: str | None = None  # a path prefix (job rows: a job kind prefix)
    client: str | None = None
    follow_up_id: str | None = None
    kind: str | None = None  # request | job
    outcome: str | None = None


@dataclass
class Page:
    entries: list[Entry]
    next_cursor: str | None  # None: the last page


@dataclass
class Timeline:
    """Everything that happened for one follow-up, oldest first."""

    follow_up_id: str
    origin_transaction_id: str | None
    entries: list[Entry]


# -- writing --------------------------------------------------------------------------------


async def insert_rows(conn: AsyncConnection, rows: Sequence[Row]) -> None:
    """The writer's batch: every row, then their references, on the raw driver (Core's per-row,
    per-column binding cost more than the inserts; see ``db/driver.py``). Values are bound here
    once per column kind: timestamps by the column type, JSON by orjson."""
    if not rows:
        return
    stamp = _binder(E.c.started_at, conn.dialect)
    entries = [
        tuple(
            stamp(r.values[c])
            if c == "started_at"
            else orjson.dumps(r.values[c]).decode()
            if c in _JSON_COLUMNS
            else r.values[c]
            for c in _ENTRY_COLUMNS
        )
        for r in rows
    ]
    refs = [(ref, r.values["id"]) for r in rows for ref in dict.fromkeys(r.refs)]
    driver = await Driver.of(conn)
    await driver.insert(E.name, _ENTRY_COLUMNS, entries)
    await driver.insert(R.name, ("ref", "entry_id"), refs)  # after: they refer to the entries


_ENTRY_COLUMNS = tuple(c.name for c in E.columns)
_JSON_COLUMNS = frozenset({"properties", "orchestrations"})


def _binder(column: Any, dialect: Dialect) -> Callable[[Any], Any]:
    processor = column.type.dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)


async def purge(conn: AsyncConnection, *, before: datetime) -> int:
    """Delete up to ``PURGE_CHUNK`` rows started before ``before`` (and their references); the
    number deleted. The caller repeats until 0, each chunk its own short transaction."""
    doomed = select(E.c.id).where(E.c.started_at < before).order_by(E.c.started_at).limit(PURGE_CHUNK)
    ids = [str(i) for i in (await conn.execute(doomed)).scalars()]
    if not ids:
        return 0
    await conn.execute(delete(R).where(R.c.entry_id.in_(ids)))
    await conn.execute(delete(E).where(E.c.id.in_(ids)))
    return len(ids)


# -- reading --------------------------------------------------------------------------------


async def list_entries(
    conn: AsyncConnection, filters: Filters | None = None, *, after: str | None = None, limit: int = 50
) -> Page:
    """Newest first, ``limit`` per page (at most 500); ``after`` is the previous page's
    ``next_cursor``. Keyset paging on (started_at, id): a page costs the same at any depth."""
    limit = max(1, min(limit, MAX_PAGE))
    stmt = _filtered(select(*_SUMMARY), filters or Filters())
    if after:
        moment, _, last_id = after.partition("|")
        stmt = stmt.where(tuple_(E.c.started_at, E.c.id) < tuple_(_instant(moment), last_id))
    stmt = stmt.order_by(E.c.started_at.desc(), E.c.id.desc()).limit(limit + 1)
    rows = (await conn.execute(stmt)).all()
    entries = [_entry(r) for r in rows[:limit]]
    return Page(entries, entries[-1].cursor if len(rows) > limit else None)


async def get_entry(conn: AsyncConnection, entry_id: str) -> Entry | None:
    """One row with its bodies and orchestrations (a job's: with its origin transaction id)."""
    row = (await conn.execute(select(*_DETAIL).where(E.c.id == entry_id))).first()
    if row is None:
        return None
    entry = _entry(row)
    if entry.kind == "job":
        entry.origin_transaction_id = await _origin(conn, select(R.c.ref).where(R.c.entry_id == entry_id))
    return entry


async def entries_of_transaction(conn: AsyncConnection, transaction_id: str) -> list[Entry]:
    """The rows of one transaction id (an OpenHIM transaction id, as the administrator has it)."""
    stmt = select(*_DETAIL).where(E.c.transaction_id == transaction_id).order_by(E.c.started_at)
    return [_entry(r) for r in (await conn.execute(stmt)).all()]


async def timeline(conn: AsyncConnection, follow_up_id: str) -> Timeline:
    """Every row about the follow-up, oldest first: its request, the CHT submission, the
    Encounter, the callbacks (reached through the Subscription and Task the request named)."""
    stmt = select(*_DETAIL).where(E.c.id.in_(_related_ids(follow_up_id))).order_by(E.c.started_at, E.c.id)
    entries = [_entry(r) for r in (await conn.execute(stmt)).all()]
    origin = next(
        (e.transaction_id for e in entries if e.kind == "request" and e.follow_up_id == follow_up_id),
        None,
    )
    for entry in entries:
        if entry.kind == "job":
            entry.origin_transaction_id = origin
    return Timeline(follow_up_id, origin, entries)


async def timeline_of_transaction(conn: AsyncConnection, transaction_id: str) -> Timeline | None:
    """From an OpenHIM transaction id to everything done for the follow-up it started or touched
    (the CHT record, the Encounter, the callbacks); None when no row of it names a follow-up."""
    stmt = (
        select(E.c.follow_up_id)
        .where(E.c.transaction_id == transaction_id, E.c.follow_up_id.is_not(None))
        .order_by(E.c.started_at)
        .limit(1)
    )
    follow_up_id = (await conn.execute(stmt)).scalar()
    return await timeline(conn, str(follow_up_id)) if follow_up_id is not None else None


def _related_ids(follow_up_id: str) -> Select[Any]:
    """Ids of the rows sharing a reference with the rows naming the follow-up. A list's id is no
    link (it would bring in every follow-up of the list)."""
    own = select(R.c.entry_id).where(R.c.ref == f"follow-up:{follow_up_id}")
    refs = select(R.c.ref).where(R.c.entry_id.in_(own), ~R.c.ref.startswith("list:"))
    return select(R.c.entry_id).where(R.c.ref.in_(refs))


async def _origin(conn: AsyncConnection, refs: Select[Any]) -> str | None:
    stmt = (
        select(E.c.transaction_id)
        .join(R, R.c.entry_id == E.c.id)
        .where(E.c.kind == "request", R.c.ref.in_(refs), ~R.c.ref.startswith("list:"))
        .order_by(E.c.started_at)
        .limit(1)
    )
    found = (await conn.execute(stmt)).scalar()
    return str(found) if found is not None else None


def _filtered(stmt: Select[Any], f: Filters) -> Select[Any]:
    conditions = []
    if f.since is not None:
        conditions.append(E.c.started_at >= f.since)
    if f.until is not None:
        conditions.append(E.c.started_at < f.until)
    if f.status is not None:
        conditions.append(E.c.status == f.status)
    if f.status_class is not None:
        conditions.append(and_(E.c.status >= f.status_class * 100, E.c.status < f.status_class * 100 + 100))
    if f.path:
        conditions.append(or_(E.c.path == f.path, E.c.path.startswith(f.path, autoescape=True)))
    if f.client:
        conditions.append(E.c.client == f.client)
    if f.kind:
        conditions.append(E.c.kind == f.kind)
    if f.outcome:
        conditions.append(E.c.outcome == f.outcome)
    if f.follow_up_id:
        conditions.append(E.c.id.in_(_related_ids(f.follow_up_id)))
    return stmt.where(*conditions) if conditions else stmt


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a journal cursor: {text!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"not a journal cursor: {text!r}")
    return moment


def _entry(row: Any) -> Entry:
    m = row._mapping
    return Entry(
        id=m["id"],
        transaction_id=m["transaction_id"],
        kind=m["kind"],
        started_at=m["started_at"],
        duration_ms=float(m["duration_ms"]),
        client=m["client"],
        method=m["method"],
        path=m["path"],
        query=m["query"],
        status=m["status"],
        outcome=m["outcome"],
        error=m["error"],
        follow_up_id=m["follow_up_id"],
        job_id=m["job_id"],
        attempt=m["attempt"],
        target=m["target"],
        properties=dict(m["properties"] or {}),
        request_body=m.get("request_body"),
        response_body=m.get("response_body"),
        orchestrations=list(m.get("orchestrations") or []),
    )
