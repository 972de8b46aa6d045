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
from sqlalchemy import Join, bindparam, delete, func, insert, select, update
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
    """A list's rows as the driver inserts them (``staging``), built before its transactions open:
    for 10,000 entries that is ~20 ms of CPU, which held SQLite's one writer from everyone else."""

    list_id: str
    entry_count: int
    staged_count: int
    entry_rows: list[tuple[Any, ...]]
    key_rows: list[tuple[str, str, str]]

    def slices(self, entries_per_slice: int) -> list[Staging]:
        """The rows cut in slices of ``entries_per_slice`` entries, the keys shared out in step
        (each slice its own transaction: ``staged_lists.py``); at least one slice."""
        count = max(1, -(-len(self.entry_rows) // entries_per_slice))
        keys_per_slice = -(-len(self.key_rows) // count)
        return [
            Staging(
                self.list_id,
                self.entry_count,
                self.staged_count,
                self.entry_rows[n * entries_per_slice : (n + 1) * entries_per_slice],
                self.key_rows[n * keys_per_slice : (n + 1) * keys_per_slice],
            )
            for n in range(count)
        ]


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
    staged = sum(1 for e in entries if e.request is not None)
    return Staging(list_id, len(entries), staged, entry_rows, [(k, f, list_id) for k, f in keys])


async def open_list(conn: AsyncConnection, rows: Staging, client_id: str | None, *, complete: bool) -> None:
    """The list's row; not ``complete``: still ``staging``, and nothing of it counts until
    ``close_staging`` (its entries and keys are inserted by ``stage_rows``, in slices)."""
    now = datetime.now(UTC)
    await conn.execute(
        insert(ltfu_list).values(
            id=rows.list_id,
            received_at=now,
            entry_count=rows.entry_count,
            staged_count=rows.staged_count,
            done_at=None if rows.staged_count else now,
            client_id=client_id,
            staging=not complete,
        )
    )


async def stage_rows(conn: AsyncConnection, rows: Staging) -> None:
    """Entries and the keys of the follow-ups they will write (all of ``staging``'s, or a slice)."""
    # thousands of rows: straight to the driver (COPY on PostgreSQL), in the caller's transaction
    await (await Driver.of(conn)).insert_many(
        [
            (ltfu_list_entry.name, _ENTRY_COLUMNS, rows.entry_rows),
            (ltfu_staged_key.name, ("key", "follow_up_id", "list_id"), rows.key_rows),
        ]
    )


async def close_staging(conn: AsyncConnection, list_id: str) -> None:
    """The last slice is in: the list, its entries and keys count from this commit on."""
    await conn.execute(update(ltfu_list).where(ltfu_list.c.id == list_id).values(staging=False))


async def drop_staging(conn: AsyncConnection, *, keep: Iterable[str] = (), only: str | None = None) -> None:
    """Delete lists whose staging never finished (a crash, an error between two slices), with
    their entries and keys: all but those in ``keep`` (being staged now), or just ``only``.
    Their keys would make the next list staging one of those follow-ups fail."""
    stmt = select(ltfu_list.c.id).where(ltfu_list.c.staging.is_(True))
    if only is not None:
        stmt = stmt.where(ltfu_list.c.id == only)
    kept = set(keep)
    for list_id in [list_id for (list_id,) in await conn.execute(stmt) if list_id not in kept]:
        await _delete_list(conn, list_id)


def _counted_keys() -> Join:
    """``ltfu_staged_key`` joined to lists whose staging is finished (the keys that count)."""
    return ltfu_staged_key.join(
        ltfu_list, (ltfu_list.c.id == ltfu_staged_key.c.list_id) & ltfu_list.c.staging.is_(False)
    )


async def find_staged(conn: AsyncConnection, keys: Iterable[str]) -> dict[str, StagedFollowUp]:
    """The staged follow-ups holding any of these keys (of lists whose staging is finished)."""
    wanted = sorted(set(keys))
    found: dict[str, StagedFollowUp] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        rows = await conn.execute(
            select(ltfu_staged_key.c.key, ltfu_staged_key.c.follow_up_id, ltfu_staged_key.c.list_id)
            .select_from(_counted_keys())
            .where(ltfu_staged_key.c.key.in_(wanted[start : start + _IN_CHUNK]))
        )
        for key, follow_up_id, list_id in rows:
            found[key] = StagedFollowUp(follow_up_id, list_id)
    return found


async def any_staged(conn: AsyncConnection) -> bool:
    """Whether any follow-up is staged at all (one index probe)."""
    found = await conn.execute(select(ltfu_staged_key.c.key).select_from(_counted_keys()).limit(1))
    return found.first() is not None


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
    # The list row's lock makes chunks of one list finishing at once take turns: on PostgreSQL
    # (READ COMMITTED) each would count the other's entries as still staged, and neither would
    # mark the list done. SQLite's writers take turns already (FOR UPDATE is not rendered there).
    await conn.execute(select(ltfu_list.c.id).where(ltfu_list.c.id == list_id).with_for_update())
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
    if remaining == 0:
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
    await _delete_list(conn, list_id)
    return True


async def _delete_list(conn: AsyncConnection, list_id: str) -> None:
    """A list's row, entries and any key left."""
    await conn.execute(delete(ltfu_staged_key).where(ltfu_staged_key.c.list_id == list_id))
    await conn.execute(delete(ltfu_list_entry).where(ltfu_list_entry.c.list_id == list_id))
    await conn.execute(delete(ltfu_list).where(ltfu_list.c.id == list_id))


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
