"""Storage of staged LTFU lists: entries to write in the background, their answers, their keys.

Thin functions over ``ltfu/tables.py`` that run on the caller's connection, so staging rows, keys
and the jobs that will write them commit together (or not at all).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db.driver import Driver
from cht_interop.ltfu.tables import ltfu_list, ltfu_list_entry, ltfu_staged_key

_KEY_MAX = 400
_ENTRY_COLUMNS = ("list_id", "position", "state", "follow_up_id", "request", "response")
_IN_CHUNK = 500


def open_key(patient_id: str, organization_id: str) -> str:
    """The key of "an open follow-up for this patient from this requester"."""
    return _fit(f"open:{patient_id}|{organization_id}")


def identifier_key(token: str) -> str:
    """The key of "the ServiceRequest with this identifier" (``system|value``)."""
    return _fit(f"sr:{token}")


def _fit(key: str) -> str:
    if len(key) <= _KEY_MAX:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One list entry as staged: answered at once (``response``) or to write (``request``)."""

    position: int
    follow_up_id: str | None = None
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StagedEntry:
    position: int
    follow_up_id: str
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StagedFollowUp:
    follow_up_id: str
    list_id: str


@dataclass(frozen=True, slots=True)
class ListStatus:
    list_id: str
    entry_count: int
    staged_count: int
    remaining: int  # staged entries not written yet
    done_at: datetime | None
    entries: list[dict[str, Any]]  # the batch-response entries, in list order (once remaining is 0)
    client_id: str | None = None  # the API client that sent the list


@dataclass(frozen=True, slots=True)
class Staging:
    """A turn's rows as the driver inserts them (``staging``), built before its transaction opens:
    for 10,000 entries that was ~20 ms of CPU, which held SQLite's one writer from everyone else."""

    list_id: str
    entry_rows: list[tuple[Any, ...]]
    key_rows: list[tuple[str, str, str]]


def staging(list_id: str, entries: Sequence[EntryRow], keys: Iterable[tuple[str, str]]) -> Staging:
    """The list's entries and the keys of the follow-ups it will write (key → follow-up id), as rows."""
    entry_rows = [
        (
            list_id,
            e.position,
            "staged" if e.request is not None else "done",
            e.follow_up_id,
            _dump(e.request),
            _dump(e.response),
        )
        for e in entries
    ]
    return Staging(list_id, entry_rows, [(k, f, list_id) for k, f in keys])


async def open_list(conn: AsyncConnection, list_id: str, entry_count: int, client_id: str | None) -> None:
    """The list's row, ``staging`` until ``close_staging``: no status, and not done however many
    of its entries are written (its entries, keys and jobs are committed a turn at a time)."""
    await conn.execute(
        insert(ltfu_list).values(
            id=list_id,
            received_at=datetime.now(UTC),
            entry_count=entry_count,
            staged_count=0,
            done_at=None,
            client_id=client_id,
            staging=True,
        )
    )


async def stage_rows(conn: AsyncConnection, rows: Staging) -> None:
    """Entries and the keys of the follow-ups they will write (a turn's), which count from this commit."""
    # thousands of rows: straight to the driver (COPY on PostgreSQL), in the caller's transaction
    await (await Driver.of(conn)).insert_many(
        [
            (ltfu_list_entry.name, _ENTRY_COLUMNS, rows.entry_rows),
            (ltfu_staged_key.name, ("key", "follow_up_id", "list_id"), rows.key_rows),
        ]
    )


async def close_staging(conn: AsyncConnection, list_id: str) -> bool:
    """Every turn of the list is in (or its stager is gone: what it committed stays): it has a
    status from this commit on, counted from its rows. True when nothing is left to write: it is
    done now (else the write that finishes it says so, ``finish``)."""
    await _lock_list(conn, list_id)
    entries, staged = (
        await conn.execute(
            select(func.count(), func.count(ltfu_list_entry.c.follow_up_id)).where(
                ltfu_list_entry.c.list_id == list_id
            )
        )
    ).one()
    done = await _remaining(conn, list_id) == 0
    await conn.execute(
        update(ltfu_list)
        .where(ltfu_list.c.id == list_id)
        .values(
            staging=False,
            entry_count=entries,
            staged_count=staged,
            done_at=datetime.now(UTC) if done else None,
        )
    )
    return done


async def still_staging(conn: AsyncConnection) -> list[str]:
    """The lists whose staging has not been closed (being staged, or their stager is gone)."""
    return list((await conn.scalars(select(ltfu_list.c.id).where(ltfu_list.c.staging.is_(True)))).all())


async def drop(conn: AsyncConnection, list_id: str) -> None:
    """A list's row, entries and any key left (a list that has nothing to write after all)."""
    await conn.execute(delete(ltfu_staged_key).where(ltfu_staged_key.c.list_id == list_id))
    await conn.execute(delete(ltfu_list_entry).where(ltfu_list_entry.c.list_id == list_id))
    await conn.execute(delete(ltfu_list).where(ltfu_list.c.id == list_id))


async def find_staged(conn: AsyncConnection, keys: Iterable[str]) -> dict[str, StagedFollowUp]:
    """The staged follow-ups holding any of these keys."""
    wanted = sorted(set(keys))
    found: dict[str, StagedFollowUp] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        rows = await conn.execute(
            select(ltfu_staged_key.c.key, ltfu_staged_key.c.follow_up_id, ltfu_staged_key.c.list_id).where(
                ltfu_staged_key.c.key.in_(wanted[start : start + _IN_CHUNK])
            )
        )
        for key, follow_up_id, list_id in rows:
            found[key] = StagedFollowUp(follow_up_id, list_id)
    return found


async def any_staged(conn: AsyncConnection) -> bool:
    """Whether any follow-up is staged at all (one index probe)."""
    return (await conn.execute(select(ltfu_staged_key.c.key).limit(1))).first() is not None


async def load_staged(conn: AsyncConnection, list_id: str, positions: Sequence[int]) -> list[StagedEntry]:
    """The entries among ``positions`` still waiting to be written."""
    out: list[StagedEntry] = []
    for start in range(0, len(positions), _IN_CHUNK):
        rows = await conn.execute(
            select(ltfu_list_entry.c.position, ltfu_list_entry.c.follow_up_id, ltfu_list_entry.c.request)
            .where(
                ltfu_list_entry.c.list_id == list_id,
                ltfu_list_entry.c.state == "staged",
                ltfu_list_entry.c.position.in_(list(positions[start : start + _IN_CHUNK])),
            )
            .order_by(ltfu_list_entry.c.position)
        )
        out.extend(StagedEntry(pos, str(fid), orjson.loads(req)) for pos, fid, req in rows)
    return out


async def finish(conn: AsyncConnection, list_id: str, answered: Sequence[tuple[int, dict[str, Any]]]) -> bool:
    """Record the answers of written entries and free their keys; True when the list is complete.

    Called only after the follow-ups are committed in the FHIR store: a request arriving between
    the two finds the follow-up there, or its key here, never neither.
    """
    staging = await _lock_list(conn, list_id)
    if answered:
        await conn.execute(
            update(ltfu_list_entry)
            .where(
                ltfu_list_entry.c.list_id == list_id,
                ltfu_list_entry.c.position == bindparam("b_position"),
            )
            .values(state="done", request=None, response=bindparam("b_response")),
            [{"b_position": pos, "b_response": _dump(response)} for pos, response in answered],
        )
        positions = [pos for pos, _ in answered]
        for start in range(0, len(positions), _IN_CHUNK):
            follow_ups = (
                select(ltfu_list_entry.c.follow_up_id)
                .where(
                    ltfu_list_entry.c.list_id == list_id,
                    ltfu_list_entry.c.position.in_(positions[start : start + _IN_CHUNK]),
                )
                .scalar_subquery()
            )
            await conn.execute(
                delete(ltfu_staged_key).where(
                    ltfu_staged_key.c.list_id == list_id, ltfu_staged_key.c.follow_up_id.in_(follow_ups)
                )
            )
    remaining = await _remaining(conn, list_id)
    if remaining == 0 and not staging:  # while staging, more may come: ``close_staging`` says
        await conn.execute(
            update(ltfu_list)
            .where(ltfu_list.c.id == list_id, ltfu_list.c.done_at.is_(None))
            .values(done_at=datetime.now(UTC))
        )
        return True
    return False


async def purge(conn: AsyncConnection, list_id: str) -> bool:
    """Delete a finished list: its row, entries and any key left (False: unknown or not finished)."""
    done = await conn.scalar(select(ltfu_list.c.done_at).where(ltfu_list.c.id == list_id))
    if done is None:
        return False
    await drop(conn, list_id)
    return True


async def _lock_list(conn: AsyncConnection, list_id: str) -> bool:
    """Lock the list's row; whether it is still staging. Writes finishing chunks of one list (and
    its close) take turns: on PostgreSQL (READ COMMITTED) each would count the other's entries as
    still staged, and none would mark the list done. SQLite's writers take turns already (FOR
    UPDATE is not rendered there)."""
    found = await conn.scalar(select(ltfu_list.c.staging).where(ltfu_list.c.id == list_id).with_for_update())
    return bool(found)


async def _remaining(conn: AsyncConnection, list_id: str) -> int:
    count = await conn.scalar(
        select(func.count())
        .select_from(ltfu_list_entry)
        .where(ltfu_list_entry.c.list_id == list_id, ltfu_list_entry.c.state == "staged")
    )
    return int(count or 0)


async def status(conn: AsyncConnection, list_id: str) -> ListStatus | None:
    """The list's progress (None while it is being staged: nobody was told of it yet); once nothing is
    left to write, every entry's answer too (polling a list still being written costs one count,
    however long the list)."""
    row = (await conn.execute(select(ltfu_list).where(ltfu_list.c.id == list_id))).first()
    if row is None or row.staging:
        return None
    remaining = await _remaining(conn, list_id)
    entries: list[dict[str, Any]] = []
    if remaining == 0:
        rows = await conn.execute(
            select(ltfu_list_entry.c.response)
            .where(ltfu_list_entry.c.list_id == list_id)
            .order_by(ltfu_list_entry.c.position)
        )
        entries = [orjson.loads(response) for (response,) in rows]
    return ListStatus(
        list_id, row.entry_count, row.staged_count, remaining, row.done_at, entries, row.client_id
    )


def _dump(value: dict[str, Any] | None) -> str | None:
    return orjson.dumps(value).decode() if value is not None else None
