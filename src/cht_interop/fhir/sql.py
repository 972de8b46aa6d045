"""Every statement the FHIR store runs on its tables (``cht_interop.fhir.tables``): the current
rows and versions (``fhir_resource``, ``fhir_version``), the index tables (``fhir_token``,
``fhir_reference``, ``fhir_string``, ``fhir_date``) and the sequence counter (``fhir_counter``).

One place for the SQL, so a schema or index change is made and reviewed here and nowhere else.
The rest of the store calls these functions and never writes SQL itself:

- the write path runs on the raw driver (``cht_interop.db.driver``: SQL text with ``?`` markers,
  rows as tuples, every INSERT of a flush in one call); rare statements stay SQLAlchemy Core;
- look-ups by key are chunked (500 ids per ``IN``, 10 ``UNION ALL`` branches per statement), so a
  transaction Bundle's reference checks are one round trip whatever the number of types;
- single reads (read, vread) are Core; reads in batches (``current_rows``), search pages and
  ``_include`` run on the driver, with the WHERE / ORDER BY that ``search_sql`` compiles from the
  query; history's statements are in ``sql_history``.

The Subscription criteria index has tables of its own; ``subscriptions.index`` and
``subscriptions.matching`` own those statements.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from sqlalchemy import Row, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db.driver import Driver, InsertBatch, markers
from cht_interop.fhir.index_rows import IndexRows
from cht_interop.fhir.outcomes import Stored
from cht_interop.fhir.search import SearchQuery
from cht_interop.fhir.search_sql import Sql, order_sql, where_sql
from cht_interop.fhir.tables import (
    fhir_counter,
    fhir_date,
    fhir_reference,
    fhir_resource,
    fhir_string,
    fhir_token,
    fhir_version,
)
from cht_interop.kit.fair import off_loop

R, V = fhir_resource, fhir_version
CHUNK = 500  # ids per IN list
_BRANCHES = 10  # UNION ALL branches per key look-up statement (<= 5,020 parameters)
_CURRENT_SQL = (
    "SELECT version_id, last_updated, deleted, content, seq FROM fhir_resource "
    "WHERE res_type = ? AND res_id = ?"
)
_CURRENT_FOR_UPDATE_SQL = _CURRENT_SQL + " FOR UPDATE"
# many rows locked in (res_type, res_id) order: two transactions locking overlapping rows queue
_CURRENTS_FOR_UPDATE_SQL = (
    "SELECT res_type, res_id, version_id, last_updated, deleted, content, seq FROM fhir_resource "
    "WHERE (res_type, res_id) IN (SELECT t, i FROM unnest(CAST(? AS text[]), CAST(? AS text[])) AS k(t, i)) "
    "ORDER BY res_type, res_id FOR UPDATE"
)
_INDEXED_TABLES = (fhir_resource, fhir_token, fhir_reference, fhir_string, fhir_date)
_INDEX_TABLES = ("fhir_token", "fhir_reference", "fhir_string", "fhir_date")
# column orders of the driver-level INSERTs (IndexRows tuples sit between res_type and res_id)
_RESOURCE_COLUMNS = ("res_type", "res_id", "seq", "version_id", "last_updated", "deleted", "content")
_VERSION_COLUMNS = ("res_type", "res_id", "version_id", "last_updated", "deleted", "content")
_TOKEN_COLUMNS = ("res_type", "param", "system", "value", "res_id")
_REFERENCE_COLUMNS = ("res_type", "param", "target_type", "target_id", "target_url", "res_id")
_STRING_COLUMNS = ("res_type", "param", "value", "norm", "res_id")
_DATE_COLUMNS = ("res_type", "param", "low", "high", "res_id")
_UPDATE_CURRENT_SQL = (
    "UPDATE fhir_resource SET version_id = ?, last_updated = ?, deleted = ?, content = ? "
    "WHERE res_type = ? AND res_id = ?"
)


def chunked(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """``ids`` in slices of at most :data:`CHUNK`."""
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


# ---- the write path -------------------------------------------------------------------------------


async def allocate_seqs(driver: Driver, conn: AsyncConnection, n: int) -> list[int]:
    """``n`` new resource sequence numbers, ascending: PostgreSQL's sequence (no row lock shared by
    writers), SQLite's counter row (SQLite serialises writers anyway)."""
    if n <= 0:
        return []
    if not driver.sqlite:
        rows = await driver.fetchall("SELECT nextval('fhir_resource_seq') FROM generate_series(1, ?)", (n,))
        return sorted(int(r[0]) for r in rows)
    found = await driver.fetchall(
        "UPDATE fhir_counter SET value = value + ? WHERE name = 'resource' RETURNING value", (n,)
    )
    top = found[0][0] if found else None
    if top is None:
        await conn.execute(insert(fhir_counter).values(name="resource", value=n))
        top = n
    return list(range(int(top) - n + 1, int(top) + 1))


async def current_row(driver: Driver, rtype: str, rid: str, *, lock: bool) -> tuple[Any, ...] | None:
    """(version_id, last_updated, deleted, content, seq) of the current row; ``lock``: FOR UPDATE
    on PostgreSQL (SQLite transactions are serial already)."""
    sql = _CURRENT_FOR_UPDATE_SQL if lock and not driver.sqlite else _CURRENT_SQL
    rows = await driver.fetchall(sql, (rtype, rid))
    return rows[0] if rows else None


async def lock_current_rows(
    driver: Driver, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The current rows of ``keys``: (res_type, res_id) → (version_id, last_updated, deleted,
    content, seq) of the rows that exist. PostgreSQL: FOR UPDATE, in one round trip. SQLite: a
    write transaction holds the only writer already; one statement per ~10 types and 500 ids
    instead of one per row (each statement is a hop to the driver's thread)."""
    if not keys:
        return {}
    if not driver.sqlite:
        rows = await driver.fetchall(_CURRENTS_FOR_UPDATE_SQL, ([k[0] for k in keys], [k[1] for k in keys]))
        return {(str(r[0]), str(r[1])): tuple(r[2:]) for r in rows}
    found: dict[tuple[str, str], tuple[Any, ...]] = {}
    columns = "res_type, res_id, version_id, last_updated, deleted, content, seq"
    for sql, params in live_key_queries(keys, columns=columns, deleted_too=True):
        found.update({(str(r[0]), str(r[1])): tuple(r[2:]) for r in await driver.fetchall(sql, params)})
    return found


async def seq_of(conn: AsyncConnection, rtype: str, rid: str) -> int:
    """The stored row's sequence number (0 when there is no row)."""
    seq = (await conn.execute(select(R.c.seq).where(R.c.res_type == rtype, R.c.res_id == rid))).scalar()
    return int(seq) if seq is not None else 0


async def first_referrer(conn: AsyncConnection, rtype: str, rid: str) -> Row[Any, Any, Any] | None:
    """(res_type, res_id, param) of one other resource that refers to ``rtype/rid``, if any."""
    ref = fhir_reference
    return (
        await conn.execute(
            select(ref.c.res_type, ref.c.res_id, ref.c.param)
            .where(
                ref.c.target_type == rtype,
                ref.c.target_id == rid,
                ~((ref.c.res_type == rtype) & (ref.c.res_id == rid)),
            )
            .limit(1)
        )
    ).first()


class RowWrite(Protocol):
    """One resource's write as ``write_rows`` needs it (the session's staged write)."""

    @property
    def stored(self) -> Stored: ...
    @property
    def seq(self) -> int: ...
    @property
    def is_new_row(self) -> bool: ...  # INSERT into fhir_resource (else UPDATE)
    @property
    def had_index(self) -> bool: ...  # its old index rows must be deleted first
    @property
    def rows(self) -> IndexRows | None: ...  # None for a delete


async def write_rows(
    driver: Driver, batch: Sequence[RowWrite], versions_of: Sequence[RowWrite], also: Sequence[InsertBatch]
) -> None:
    """Write a flush: ``batch`` has one write per resource (its final state), ``versions_of`` every
    version written; ``also`` are further INSERTs sent with them (the Subscription criteria
    index). Updated rows and stale index rows first, then every INSERT in one call. The rows are
    built (JSON text, index tuples: ~2 s for a 100,000-entry transaction) off the event loop when
    there are many (``kit/fair.py``)."""
    rows = await off_loop(lambda: _rows_of(batch, versions_of), items=len(batch))
    await driver.executemany(_UPDATE_CURRENT_SQL, rows.updated)
    stale = [(p.stored.resource_type, p.stored.id) for p in batch if p.had_index]
    if stale:
        for table in _INDEX_TABLES:
            await driver.executemany(f"DELETE FROM {table} WHERE res_type = ? AND res_id = ?", stale)
    await driver.insert_many(
        [
            ("fhir_resource", _RESOURCE_COLUMNS, rows.resources),
            ("fhir_version", _VERSION_COLUMNS, rows.versions),
            ("fhir_token", _TOKEN_COLUMNS, rows.tokens),
            ("fhir_reference", _REFERENCE_COLUMNS, rows.refs),
            ("fhir_string", _STRING_COLUMNS, rows.strings),
            ("fhir_date", _DATE_COLUMNS, rows.dates),
            *also,
        ]
    )


@dataclass
class _FlushRows:
    updated: list[tuple[Any, ...]] = field(default_factory=list)
    resources: list[tuple[Any, ...]] = field(default_factory=list)
    versions: list[tuple[Any, ...]] = field(default_factory=list)
    tokens: list[tuple[Any, ...]] = field(default_factory=list)
    refs: list[tuple[Any, ...]] = field(default_factory=list)
    strings: list[tuple[Any, ...]] = field(default_factory=list)
    dates: list[tuple[Any, ...]] = field(default_factory=list)


def _rows_of(batch: Sequence[RowWrite], versions_of: Sequence[RowWrite]) -> _FlushRows:
    """The statement parameters of a flush (pure: no database, safe in a worker thread)."""
    contents: dict[int, str | None] = {}

    def content(s: Stored) -> str | None:
        if id(s) not in contents:
            contents[id(s)] = orjson.dumps(s.resource).decode() if s.resource is not None else None
        return contents[id(s)]

    out = _FlushRows()
    out.updated = [
        (st.version_id, st.last_updated, st.deleted, content(st), st.resource_type, st.id)
        for st in (p.stored for p in batch if not p.is_new_row)
    ]
    out.resources = [
        (st.resource_type, st.id, seq, st.version_id, st.last_updated, st.deleted, content(st))
        for st, seq in ((p.stored, p.seq) for p in batch if p.is_new_row)
    ]
    out.versions = [
        (st.resource_type, st.id, st.version_id, st.last_updated, st.deleted, content(st))
        for st in (p.stored for p in versions_of)
    ]
    for p in batch:
        if p.rows is None:
            continue
        t, i = p.stored.resource_type, p.stored.id
        out.tokens += [(t, *row, i) for row in p.rows.tokens]
        out.refs += [(t, *row, i) for row in p.rows.refs]
        out.strings += [(t, *row, i) for row in p.rows.strings]
        out.dates += [(t, *row, i) for row in p.rows.dates]
    return out


# ---- look-ups -------------------------------------------------------------------------------------


async def matching_ids(
    driver: Driver, q: SearchQuery, base_url: str | None, *, limit: int | None = None
) -> list[str]:
    """Ids of the resources a (match URL) query selects, oldest first."""
    where, params = where_sql(q, base_url)
    sql = f"SELECT fhir_resource.res_id FROM fhir_resource WHERE {where} ORDER BY fhir_resource.seq + 0"
    if limit is not None:
        sql += " LIMIT ?"
        params = [*params, limit]
    return [str(r[0]) for r in await driver.fetchall(sql, tuple(params))]


# match URLs searched together (PostgreSQL): this many UNION ALLed branches in one statement
_MATCH_BRANCHES = 100


async def matching_ids_each(
    driver: Driver, queries: Sequence[SearchQuery], base_url: str | None, *, limit: int
) -> list[list[str]]:
    """``matching_ids`` of every query, up to ``_MATCH_BRANCHES`` in one round trip. SQLite takes
    no parenthesised branch with its own LIMIT: there each branch reads from a subquery."""
    found: list[list[tuple[int, str]]] = [[] for _ in queries]
    for start in range(0, len(queries), _MATCH_BRANCHES):
        branches: list[str] = []
        params: list[Any] = []
        for i in range(start, min(start + _MATCH_BRANCHES, len(queries))):
            where, where_params = where_sql(queries[i], base_url)
            branch = (
                f"SELECT {i:d}, fhir_resource.seq, fhir_resource.res_id FROM fhir_resource "
                f"WHERE {where} ORDER BY fhir_resource.seq + 0 LIMIT {limit:d}"
            )
            branches.append(f"SELECT * FROM ({branch}) AS m{i:d}" if driver.sqlite else f"({branch})")
            params.extend(where_params)
        for i, seq, rid in await driver.fetchall(" UNION ALL ".join(branches), tuple(params)):
            found[int(i)].append((int(seq), str(rid)))
    return [[rid for _seq, rid in sorted(rows)] for rows in found]


def live_key_queries(
    keys: Iterable[tuple[str, str]], *, columns: str = "res_type, res_id", deleted_too: bool = False
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Driver SQL finding which (type, id) keys are stored and not deleted (``deleted_too``: or
    deleted): one ``res_type = ? AND res_id IN (…)`` branch per type and 500 ids, up to 10
    branches UNION ALLed per statement (one round trip for a typical transaction, whatever the
    number of referenced types)."""
    by_type: dict[str, list[str]] = {}
    for rtype, rid in keys:
        by_type.setdefault(rtype, []).append(rid)
    branches = [
        (rtype, sorted(ids)[start : start + CHUNK])
        for rtype, ids in sorted(by_type.items())
        for start in range(0, len(ids), CHUNK)
    ]
    for first in range(0, len(branches), _BRANCHES):
        group = branches[first : first + _BRANCHES]
        live = "" if deleted_too else " AND deleted = ?"
        sql = " UNION ALL ".join(
            f"SELECT {columns} FROM fhir_resource "
            f"WHERE res_type = ? AND res_id IN ({markers(len(ids))}){live}"
            for _t, ids in group
        )
        tail = () if deleted_too else (False,)
        yield sql, tuple(v for rtype, ids in group for v in (rtype, *ids, *tail))


async def live_keys(driver: Driver, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (type, id) keys among ``keys`` that are stored and not deleted."""
    live: set[tuple[str, str]] = set()
    for sql, params in live_key_queries(keys):
        live.update((r[0], r[1]) for r in await driver.fetchall(sql, params))
    return live


async def resource_matches(driver: Driver, q: SearchQuery, base_url: str | None, rid: str) -> bool:
    """Whether the stored ``rid`` (of the query's type) satisfies ``q``: for the chained criteria
    that Subscription matching cannot evaluate in memory."""
    where, where_params = where_sql(q, base_url)
    rows = await driver.fetchall(
        f"SELECT 1 FROM fhir_resource WHERE {where} AND fhir_resource.res_id = ? LIMIT 1",
        (*where_params, rid),
    )
    return bool(rows)


# ---- reads ----------------------------------------------------------------------------------------


async def read_row(conn: AsyncConnection, rtype: str, rid: str) -> Row[Any, Any, Any, Any] | None:
    """(version_id, last_updated, deleted, content) of the current version."""
    stmt = select(R.c.version_id, R.c.last_updated, R.c.deleted, R.c.content).where(
        R.c.res_type == rtype, R.c.res_id == rid
    )
    return (await conn.execute(stmt)).first()


async def current_rows(driver: Driver, rtype: str, ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """res_id → (version_id, last_updated, deleted, content) of the current rows of ``ids``
    (unknown ids absent): one statement per :data:`CHUNK` ids, on the driver."""
    found: dict[str, tuple[Any, ...]] = {}
    for chunk in chunked(list(dict.fromkeys(ids))):
        rows = await driver.fetchall(
            "SELECT res_id, version_id, last_updated, deleted, content FROM fhir_resource "
            f"WHERE res_type = ? AND res_id IN ({markers(len(chunk))})",
            (rtype, *chunk),
        )
        found.update((str(r[0]), tuple(r[1:])) for r in rows)
    return found


async def vread_row(conn: AsyncConnection, rtype: str, rid: str, vid: int) -> Row[Any, Any, Any] | None:
    """(last_updated, deleted, content) of one version."""
    stmt = select(V.c.last_updated, V.c.deleted, V.c.content).where(
        V.c.res_type == rtype, V.c.res_id == rid, V.c.version_id == vid
    )
    return (await conn.execute(stmt)).first()


async def count_matches(driver: Driver, where: Sql) -> int:
    """How many resources a search's WHERE (``search_sql.where_sql``) selects."""
    text_, params = where
    rows = await driver.fetchall(f"SELECT count(*) FROM fhir_resource WHERE {text_}", tuple(params))
    return int(rows[0][0])


async def page_rows(driver: Driver, q: SearchQuery, where: Sql) -> list[tuple[Any, ...]]:
    """(res_id, content) of one page of a search, plus one more row if there is a next page."""
    order, order_params = order_sql(q)
    sql = (
        "SELECT fhir_resource.res_id, fhir_resource.content FROM fhir_resource "
        f"WHERE {where[0]} ORDER BY {order} LIMIT ?"
    )
    params = [*where[1], *order_params, q.count + 1]
    if q.offset:
        sql += " OFFSET ?"
        params.append(q.offset)
    return await driver.fetchall(sql, tuple(params))


async def included_rows(driver: Driver, q: SearchQuery, ids: list[str]) -> list[tuple[Any, ...]]:
    """(seq, res_type, res_id, content) of the live resources the ``_include``/``_revinclude`` of
    ``q`` bring in for the matches ``ids`` (the matches themselves left out), oldest first."""
    wanted: list[tuple[Any, ...]] = []
    for _src, param, target in q.includes:
        for chunk in chunked(ids):
            sql = (
                "SELECT target_type, target_id FROM fhir_reference WHERE res_type = ? AND param = ? "
                f"AND res_id IN ({markers(len(chunk))}) AND target_id IS NOT NULL"
            )
            params: list[Any] = [q.resource_type, param, *chunk]
            if target is not None:
                sql += " AND target_type = ?"
                params.append(target)
            wanted += await driver.fetchall(sql, tuple(params))
    for src, param, target in q.revincludes:
        if target is not None and target != q.resource_type:
            continue
        for chunk in chunked(ids):
            wanted += await driver.fetchall(
                "SELECT res_type, res_id FROM fhir_reference WHERE res_type = ? AND param = ? "
                f"AND target_type = ? AND target_id IN ({markers(len(chunk))})",
                (src, param, q.resource_type, *chunk),
            )
    seen = {(q.resource_type, i) for i in ids}
    keys = [k for k in dict.fromkeys((str(t), str(i)) for t, i in wanted) if k not in seen]
    found: list[tuple[Any, ...]] = []
    for sql, key_params in live_key_queries(keys, columns="seq, res_type, res_id, content"):
        found += await driver.fetchall(sql, key_params)
    return sorted(found, key=lambda row: row[0])


# ---- maintenance ----------------------------------------------------------------------------------


# 10 of PostgreSQL's default 100: a tenth of the sample (3,000 rows a table). What the background
# ANALYZE must fix is the row counts after a bulk load (plans made for empty tables); autovacuum
# refreshes the finer statistics later, with the server's own target.
ANALYZE_STATISTICS_TARGET = 10


async def analyze(conn: AsyncConnection) -> None:
    """Refresh PostgreSQL's planner statistics of the resource and index tables."""
    await conn.execute(text(f"SET LOCAL default_statistics_target = {ANALYZE_STATISTICS_TARGET}"))
    await conn.execute(text(f"ANALYZE {', '.join(t.name for t in _INDEXED_TABLES)}"))
