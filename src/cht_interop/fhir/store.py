"""The embedded FHIR store: versioned resources, indexed search, HAPI-like write rules.

Every public method runs in one database transaction. Writes are staged in a :class:`WriteSession`
and flushed with one ``executemany`` (SQLite) or COPY / multi-row INSERT (PostgreSQL) per table,
all of them in one call into the driver, so a transaction Bundle of 1,000 creates costs a handful
of statements, not thousands. The write path talks to the driver directly (``cht_interop.db.driver``:
SQLAlchemy's per-statement and per-row costs were most of a small transaction); reads use Core.
Subscription matching runs at the end of every write transaction, on the same connection, and its
notification jobs are enqueued there too: they commit or vanish with the resources that caused them.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db import Database
from cht_interop.db.driver import Driver, InsertBatch, markers
from cht_interop.db.locks import advisory_xact_lock
from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir.datetimes import format_instant, now_us
from cht_interop.fhir.errors import (
    FhirError,
    InvalidRequest,
    PreconditionFailed,
    ResourceGone,
    ResourceNotFound,
    VersionConflict,
)
from cht_interop.fhir.registry import RESOURCE_TYPES, iter_references
from cht_interop.fhir.search import (
    IndexRows,
    SearchQuery,
    encode_cursor,
    extract,
    order_sql,
    parse_match_url,
    parse_query,
    split_reference,
    where_sql,
)
from cht_interop.fhir.subscriptions.criteria import Criteria
from cht_interop.fhir.tables import (
    fhir_counter,
    fhir_date,
    fhir_reference,
    fhir_resource,
    fhir_string,
    fhir_token,
    fhir_version,
)
from cht_interop.fhir.validation import check_resource

Resource = dict[str, Any]
Enqueue = Callable[[AsyncConnection, Sequence[NewJob]], Awaitable[Any]]
R, V = fhir_resource, fhir_version
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_CHUNK = 500
_BRANCHES = 10  # UNION ALL branches per reference-check statement (<= 5,020 parameters)
ANALYZE_AFTER = 2000  # resources written in one transaction that trigger a background ANALYZE (PG)
_CURRENT_SQL = (
    "SELECT version_id, last_updated, deleted, content, seq FROM fhir_resource "
    "WHERE res_type = ? AND res_id = ?"
)
_CURRENT_FOR_UPDATE_SQL = _CURRENT_SQL + " FOR UPDATE"
_INDEXED_TABLES = (fhir_resource, fhir_token, fhir_reference, fhir_string, fhir_date)
_INDEX_TABLES = ("fhir_token", "fhir_reference", "fhir_string", "fhir_date")
# column orders of the driver-level INSERTs (IndexRows tuples sit between res_type and res_id)
_RESOURCE_COLUMNS = ("res_type", "res_id", "seq", "version_id", "last_updated", "deleted", "content")
_VERSION_COLUMNS = ("res_type", "res_id", "version_id", "last_updated", "deleted", "content")
_TOKEN_COLUMNS = ("res_type", "param", "system", "value", "res_id")
_REFERENCE_COLUMNS = ("res_type", "param", "target_type", "target_id", "target_url", "res_id")
_STRING_COLUMNS = ("res_type", "param", "value", "norm", "res_id")
_DATE_COLUMNS = ("res_type", "param", "low", "high", "res_id")
log = logging.getLogger(__name__)


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


def _chunked(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def live_key_queries(
    keys: Iterable[tuple[str, str]], *, columns: str = "res_type, res_id"
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Driver SQL finding which (type, id) keys are stored and not deleted: one ``res_type = ? AND
    res_id IN (…)`` branch per type and 500 ids, up to 10 branches UNION ALLed per statement (one
    round trip for a typical transaction, whatever the number of referenced types)."""
    by_type: dict[str, list[str]] = {}
    for rtype, rid in keys:
        by_type.setdefault(rtype, []).append(rid)
    branches = [
        (rtype, sorted(ids)[start : start + _CHUNK])
        for rtype, ids in sorted(by_type.items())
        for start in range(0, len(ids), _CHUNK)
    ]
    for first in range(0, len(branches), _BRANCHES):
        group = branches[first : first + _BRANCHES]
        sql = " UNION ALL ".join(
            f"SELECT {columns} FROM fhir_resource "
            f"WHERE res_type = ? AND res_id IN ({markers(len(ids))}) AND deleted = ?"
            for _t, ids in group
        )
        yield sql, tuple(v for rtype, ids in group for v in (rtype, *ids, False))


@dataclass(slots=True)
class Stored:
    """One version of a resource as the store keeps it."""

    resource_type: str
    id: str
    version_id: int
    last_updated: int  # µs
    deleted: bool
    resource: Resource | None

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def location(self) -> str:
        return f"{self.resource_type}/{self.id}/_history/{self.version_id}"


@dataclass(slots=True)
class WriteOutcome:
    """What a create/update did: ``created`` → 201; ``changed`` false for a no-op or a conditional hit."""

    stored: Stored
    created: bool
    changed: bool = True

    @property
    def status(self) -> int:
        return 201 if self.created else 200

    @property
    def resource(self) -> Resource:
        assert self.stored.resource is not None
        return self.stored.resource


@dataclass(slots=True)
class DeleteOutcome:
    message: str
    deleted: bool


def outcome_info(message: str) -> Resource:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": message}],
    }


def _strip_server_meta(resource: Resource) -> Resource:
    out = dict(resource)
    out.pop("id", None)
    meta = out.get("meta")
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated", "source")}
        if meta:
            out["meta"] = meta
        else:
            out.pop("meta")
    return out


def parse_etag(value: str) -> int:
    raw = value.strip()
    if raw.startswith("W/"):
        raw = raw[2:]
    raw = raw.strip('"')
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"Invalid version in If-Match: {value!r}") from None


@dataclass(slots=True)
class _Pending:
    stored: Stored
    seq: int
    is_new_row: bool  # INSERT into fhir_resource (else UPDATE)
    had_index: bool  # old index rows must be deleted first
    rows: IndexRows | None  # None for a delete
    match: bool  # run Subscription matching on it


@dataclass
class WriteSession:
    """Staged writes on one connection; ``flush`` sends them with one executemany per table."""

    store: FhirStore
    conn: AsyncConnection
    base_url: str
    pending: list[_Pending] = field(default_factory=list)
    staged: dict[tuple[str, str], Stored] = field(default_factory=dict)
    staged_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    row_seq: dict[tuple[str, str], int] = field(default_factory=dict)  # seq of stored rows read here
    ref_checks: list[tuple[str, str, str, str]] = field(default_factory=list)  # type, id, path, label
    # Subscription writes for the criteria index: id, resource (None: deleted), parsed criteria
    sub_index_ops: list[tuple[str, Resource | None, Criteria | None]] = field(default_factory=list)
    created_here: set[tuple[str, str]] = field(
        default_factory=set
    )  # resources this session created  # Subscription id, version
    entry_label: str = ""  # "Bundle.entry[i]: " while a Bundle entry is being written
    to_match: list[_Pending] = field(default_factory=list)
    jobs: list[NewJob] = field(default_factory=list)
    written: int = 0  # resources flushed so far
    _driver: Driver | None = None

    async def driver(self) -> Driver:
        """The raw driver connection, for the statements of the write path (see ``cht_interop.db.driver``)."""
        if self._driver is None:
            self._driver = await Driver.of(self.conn)
        return self._driver

    # ---- ids and lookups ----

    async def allocate(self, n: int) -> list[int]:
        if n <= 0:
            return []
        driver = await self.driver()
        if not driver.sqlite:
            rows = await driver.fetchall(
                "SELECT nextval('fhir_resource_seq') FROM generate_series(1, ?)", (n,)
            )
            return sorted(int(r[0]) for r in rows)
        found = await driver.fetchall(
            "UPDATE fhir_counter SET value = value + ? WHERE name = 'resource' RETURNING value", (n,)
        )
        top = found[0][0] if found else None
        if top is None:
            await self.conn.execute(insert(fhir_counter).values(name="resource", value=n))
            top = n
        return list(range(int(top) - n + 1, int(top) + 1))

    async def current(self, rtype: str, rid: str, *, lock: bool = False) -> Stored | None:
        if (rtype, rid) in self.staged:
            return self.staged[(rtype, rid)]
        driver = await self.driver()
        sql = _CURRENT_FOR_UPDATE_SQL if lock and not driver.sqlite else _CURRENT_SQL
        rows = await driver.fetchall(sql, (rtype, rid))
        if not rows:
            return None
        version_id, last_updated, deleted, content, seq = rows[0]
        self.row_seq[(rtype, rid)] = int(seq)  # a row's seq never changes: no second look-up
        res = orjson.loads(content) if content is not None else None
        return Stored(rtype, rid, int(version_id), int(last_updated), bool(deleted), res)

    async def guard(self, rtype: str, params: Sequence[tuple[str, str]]) -> None:
        """Serialise conditional writes with the same match URL (HAPI: HFJ_RES_SEARCH_URL), so two
        concurrent conditional creates cannot both create. SQLite transactions are serial already."""
        if self.store.db.is_postgresql:
            key = f"{rtype}?" + "&".join(f"{k}={v}" for k, v in sorted(params))
            await advisory_xact_lock(self.conn, key)

    async def search_ids(self, rtype: str, params: Sequence[tuple[str, str]], *, limit: int = 2) -> list[str]:
        await self.flush()
        q = parse_query(rtype, params, match_url=True)
        return await matching_ids(await self.driver(), q, self.base_url, limit=limit)

    # ---- the write pipeline ----

    async def create(
        self,
        resource: Resource,
        *,
        rid: str | None = None,
        seq: int | None = None,
        references: list[tuple[str, Resource]] | None = None,
    ) -> WriteOutcome:
        """``references``: the resource's Reference objects, when the caller collected them already
        (a transaction Bundle does, to rewrite its ``urn:uuid`` references)."""
        rtype = resource["resourceType"]
        if seq is None:
            seq = (await self.allocate(1))[0]
        rid = rid or str(seq)
        await self._resolve_references(rtype, resource, references)
        stored = await self._stage(
            rtype, rid, seq, resource, version=1, is_new_row=True, had_index=False, references_resolved=True
        )
        return WriteOutcome(stored, created=True)

    async def update(
        self,
        rtype: str,
        rid: str,
        resource: Resource,
        *,
        if_match: str | None = None,
        trusted: bool = False,
    ) -> WriteOutcome:
        """``trusted``: built by our own code (a Bundle entry listed as trusted): no schema check."""
        body_id = resource.get("id")
        if body_id != rid:
            raise InvalidRequest(
                "HAPI-0420: Can not update resource, resource body must contain an ID element which matches "
                f'the request URL for update (PUT) operation - Resource body ID of "{body_id}" does not '
                f'match URL ID of "{rid}"'
            )
        if not trusted:
            check_resource(resource, rtype)
        elif resource.get("resourceType") != rtype or rtype not in RESOURCE_TYPES:
            raise InvalidRequest(f"resourceType does not match {rtype}/{rid}")
        current = await self.current(rtype, rid, lock=True)
        if if_match is not None:
            wanted = parse_etag(if_match)
            if current is None or current.version_id != wanted:
                have = current.version_id if current else 0
                raise VersionConflict(
                    f"HAPI-0989: Trying to update {rtype}/{rid}/_history/{wanted} but this is not the "
                    f"current version (current is {have})"
                )
        if current is None:
            if rid.isdigit():
                raise InvalidRequest(
                    f"HAPI-0960: Can not create resource with ID[{rid}], no resource with this ID exists and "
                    "clients may only assign IDs which contain at least one non-numeric character"
                )
            if not _ID_RE.match(rid):
                raise InvalidRequest(f"HAPI-0521: Invalid resource ID[{rid}]")
            seq = (await self.allocate(1))[0]
            stored = await self._stage(rtype, rid, seq, resource, version=1, is_new_row=True, had_index=False)
            return WriteOutcome(stored, created=True)
        await self._resolve_references(rtype, resource)
        if (
            not current.deleted
            and current.resource is not None
            and _strip_server_meta(current.resource) == _strip_server_meta(resource)
        ):
            return WriteOutcome(current, created=False, changed=False)
        seq = await self._seq_of(rtype, rid)
        stored = await self._stage(
            rtype,
            rid,
            seq,
            resource,
            version=current.version_id + 1,
            is_new_row=False,
            had_index=not current.deleted,
            references_resolved=True,
        )
        return WriteOutcome(stored, created=current.deleted)

    async def _seq_of(self, rtype: str, rid: str) -> int:
        if (rtype, rid) in self.staged_seq:
            return self.staged_seq[(rtype, rid)]
        if (rtype, rid) in self.row_seq:
            return self.row_seq[(rtype, rid)]
        seq = (
            await self.conn.execute(select(R.c.seq).where(R.c.res_type == rtype, R.c.res_id == rid))
        ).scalar()
        return int(seq) if seq is not None else 0

    async def delete(self, rtype: str, rid: str) -> DeleteOutcome:
        current = await self.current(rtype, rid, lock=True)
        if current is None:
            return DeleteOutcome(f"Not deleted, resource {rtype}/{rid} does not exist.", deleted=False)
        if current.deleted:
            return DeleteOutcome(f"Not deleted, resource {rtype}/{rid} was already deleted.", deleted=False)
        await self.flush()
        ref = (
            await self.conn.execute(
                select(fhir_reference.c.res_type, fhir_reference.c.res_id, fhir_reference.c.param)
                .where(
                    fhir_reference.c.target_type == rtype,
                    fhir_reference.c.target_id == rid,
                    ~((fhir_reference.c.res_type == rtype) & (fhir_reference.c.res_id == rid)),
                )
                .limit(1)
            )
        ).first()
        if ref is not None:
            raise VersionConflict(
                f"HAPI-0550: Unable to delete {rtype}/{rid} because at least one resource has a reference to "
                f"this resource. First reference found was resource {ref.res_type}/{ref.res_id} in path "
                f"{ref.res_type}.{ref.param}"
            )
        ts = now_us()
        stored = Stored(rtype, rid, current.version_id + 1, ts, True, None)
        seq = await self._seq_of(rtype, rid)
        self._add(_Pending(stored, seq, is_new_row=False, had_index=True, rows=None, match=False))
        if rtype == "Subscription":
            self.sub_index_ops.append((rid, None, None))
        return DeleteOutcome(f"Successfully deleted 1 resource(s): {rtype}/{rid}", deleted=True)

    async def _stage(
        self,
        rtype: str,
        rid: str,
        seq: int,
        resource: Resource,
        *,
        version: int,
        is_new_row: bool,
        had_index: bool,
        references_resolved: bool = False,
    ) -> Stored:
        if not references_resolved:
            await self._resolve_references(rtype, resource)
        resource["id"] = rid
        meta = resource.get("meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        ts = now_us()
        meta["versionId"] = str(version)
        meta["lastUpdated"] = format_instant(ts)
        resource["meta"] = meta
        criteria = None
        if rtype == "Subscription":
            from cht_interop.fhir.subscriptions.criteria import validate_subscription

            criteria = validate_subscription(resource)
        stored = Stored(rtype, rid, version, ts, False, resource)
        rows = extract(RESOURCE_TYPES[rtype], resource, self.base_url)
        self._add(_Pending(stored, seq, is_new_row=is_new_row, had_index=had_index, rows=rows, match=True))
        if rtype == "Subscription":
            await self._after_subscription_write(stored, criteria)
        return stored

    def _add(self, p: _Pending) -> None:
        key = (p.stored.resource_type, p.stored.id)
        if p.is_new_row and key not in self.staged:
            self.created_here.add(key)
        if key in self.staged:
            # a second write to a resource already staged: it becomes an update of the staged row
            p.is_new_row = False
            p.had_index = True
        self.pending.append(p)
        self.staged[key] = p.stored
        self.staged_seq[key] = p.seq

    async def _after_subscription_write(self, stored: Stored, criteria: Criteria | None) -> None:
        """HAPI activates a requested rest-hook Subscription as a second version; we do it at once.
        The criteria index follows the final version when the session flushes."""
        res = stored.resource
        assert res is not None
        if res.get("status") == "requested" and (res.get("channel") or {}).get("type") == "rest-hook":
            if self.pending and self.pending[-1].stored is stored:
                self.pending[-1].match = False  # only the active version is matched
            active = copy.deepcopy(res)
            active["status"] = "active"
            seq = await self._seq_of(stored.resource_type, stored.id)
            await self._stage(
                "Subscription",
                stored.id,
                seq,
                active,
                version=stored.version_id + 1,
                is_new_row=False,
                had_index=True,
                references_resolved=True,
            )
            return
        self.sub_index_ops.append((stored.id, res, criteria))

    # ---- references ----

    async def _resolve_references(
        self, rtype: str, resource: Resource, references: list[tuple[str, Resource]] | None = None
    ) -> None:
        for path, ref_obj in iter_references(resource) if references is None else references:
            ref: str = ref_obj["reference"]
            where = f"{rtype}.{path}"
            if ref.startswith(("#", "urn:")):
                if ref.startswith("urn:"):
                    raise InvalidRequest(
                        f"HAPI-1095: Unable to satisfy placeholder ID {ref} found in element named "
                        f"'{path.rsplit('.', 1)[-1]}' within resource of type: {rtype}",
                        expression=[where],
                    )
                continue
            if "?" in ref:
                ref_obj["reference"] = await self._resolve_match_url(ref)
                continue
            ttype, tid, url = split_reference(ref, self.base_url)
            if url is not None:
                if not self.store.allow_external_references:
                    raise InvalidRequest(
                        f'HAPI-0507: Resource contains external reference to URL "{ref}" but this server is '
                        "not configured to allow external references",
                        expression=[where],
                    )
                continue
            if ttype is None or tid is None:
                raise InvalidRequest(f'HAPI-1100: Invalid reference "{ref}" at {where}', expression=[where])
            if ttype not in RESOURCE_TYPES:
                raise InvalidRequest(
                    f"HAPI-1094: Resource type {ttype} is not supported, specified in path: {where}",
                    expression=[where],
                )
            if ref != f"{ttype}/{tid}" and "/_history/" not in ref:
                ref_obj["reference"] = f"{ttype}/{tid}"  # an absolute URL into our own base
            staged = self.staged.get((ttype, tid))
            if staged is not None:
                if staged.deleted:
                    raise InvalidRequest(
                        f"HAPI-1096: Resource {ttype}/{tid} is deleted, specified in path: {where}",
                        expression=[where],
                    )
                continue
            self.ref_checks.append((ttype, tid, where, self.entry_label))

    async def _resolve_match_url(self, ref: str) -> str:
        ttype, params = parse_match_url(ref)
        if ttype not in RESOURCE_TYPES:
            raise InvalidRequest(f'HAPI-1093: Invalid match URL "{ref}" - Unknown resource type: "{ttype}"')
        ids = await self.search_ids(ttype, params)
        if not ids:
            raise ResourceNotFound(f'HAPI-1091: Invalid match URL "{ref}" - No resources match this search')
        if len(ids) > 1:
            raise PreconditionFailed(
                f'HAPI-1092: Invalid match URL "{ref}" - Multiple resources match this search'
            )
        return f"{ttype}/{ids[0]}"

    async def _check_references(self) -> None:
        checks, self.ref_checks = self.ref_checks, []
        wanted = {(t, i) for t, i, _, _ in checks if (t, i) not in self.staged}
        if not wanted:
            return
        live: set[tuple[str, str]] = set()
        driver = await self.driver()
        for sql, params in live_key_queries(wanted):
            live.update((r[0], r[1]) for r in await driver.fetchall(sql, params))
        for ttype, tid, where, label in checks:
            if (ttype, tid) in wanted and (ttype, tid) not in live:
                raise InvalidRequest(
                    f"{label}HAPI-1094: Resource {ttype}/{tid} not found, specified in path: {where}",
                    expression=[where],
                )

    # ---- flush ----

    async def flush(self) -> None:
        """Send staged writes (with the Subscription criteria index), in an order that keeps the
        index exact."""
        await self._check_references()
        subscription_rows = await self._subscription_index()
        if not self.pending:
            await (await self.driver()).insert_many(subscription_rows)
            return
        pending, self.pending = self.pending, []
        self.staged = {}
        self.staged_seq = {}
        # Several writes to one resource in one flush (e.g. Subscription activation): every version
        # is recorded; the current row and the index rows take the last one.
        final: dict[tuple[str, str], _Pending] = {}
        for p in pending:
            key = (p.stored.resource_type, p.stored.id)
            first = final.get(key)
            if first is None:
                final[key] = _Pending(p.stored, p.seq, p.is_new_row, p.had_index, p.rows, p.match)
            else:
                first.stored, first.rows = p.stored, p.rows
        self.written += len(final)
        await self._write_rows(list(final.values()), pending, subscription_rows)
        self.to_match.extend(p for p in pending if p.match)

    async def _subscription_index(self) -> list[InsertBatch]:
        """Drop the criteria-index rows of the Subscriptions written; return their new rows."""
        if not self.sub_index_ops:
            return []
        from cht_interop.fhir.subscriptions import index as sub_index

        ops, self.sub_index_ops = self.sub_index_ops, []
        fresh = {sid for sid, _r, _c in ops if ("Subscription", sid) in self.created_here}
        return await sub_index.update(await self.driver(), ops, fresh=fresh)

    async def _write_rows(
        self, batch: list[_Pending], versions_of: list[_Pending], also: list[InsertBatch]
    ) -> None:
        """Updated rows and stale index rows first, then every INSERT in one go (``db.driver``)."""
        driver = await self.driver()
        contents: dict[int, str | None] = {}

        def content(s: Stored) -> str | None:
            if id(s) not in contents:
                contents[id(s)] = orjson.dumps(s.resource).decode() if s.resource is not None else None
            return contents[id(s)]

        await driver.executemany(
            "UPDATE fhir_resource SET version_id = ?, last_updated = ?, deleted = ?, content = ? "
            "WHERE res_type = ? AND res_id = ?",
            [
                (st.version_id, st.last_updated, st.deleted, content(st), st.resource_type, st.id)
                for st in (p.stored for p in batch if not p.is_new_row)
            ],
        )
        stale = [(p.stored.resource_type, p.stored.id) for p in batch if p.had_index]
        if stale:
            for table in _INDEX_TABLES:
                await driver.executemany(f"DELETE FROM {table} WHERE res_type = ? AND res_id = ?", stale)
        resources = [
            (st.resource_type, st.id, seq, st.version_id, st.last_updated, st.deleted, content(st))
            for st, seq in ((p.stored, p.seq) for p in batch if p.is_new_row)
        ]
        versions = [
            (st.resource_type, st.id, st.version_id, st.last_updated, st.deleted, content(st))
            for st in (p.stored for p in versions_of)
        ]
        tokens: list[tuple[Any, ...]] = []
        refs: list[tuple[Any, ...]] = []
        strings: list[tuple[Any, ...]] = []
        dates: list[tuple[Any, ...]] = []
        for p in batch:
            if p.rows is None:
                continue
            t, i = p.stored.resource_type, p.stored.id
            tokens += [(t, *row, i) for row in p.rows.tokens]
            refs += [(t, *row, i) for row in p.rows.refs]
            strings += [(t, *row, i) for row in p.rows.strings]
            dates += [(t, *row, i) for row in p.rows.dates]
        await driver.insert_many(
            [
                ("fhir_resource", _RESOURCE_COLUMNS, resources),
                ("fhir_version", _VERSION_COLUMNS, versions),
                ("fhir_token", _TOKEN_COLUMNS, tokens),
                ("fhir_reference", _REFERENCE_COLUMNS, refs),
                ("fhir_string", _STRING_COLUMNS, strings),
                ("fhir_date", _DATE_COLUMNS, dates),
                *also,
            ]
        )

    async def finish(self) -> None:
        """Flush, match the written resources against active Subscriptions, enqueue every job."""
        await self.flush()
        to_match, self.to_match = self.to_match, []
        if to_match:
            from cht_interop.fhir.subscriptions.matching import match_writes

            self.jobs.extend(
                await match_writes(
                    self.conn,
                    [(p.stored, p.rows) for p in to_match if p.rows],
                    self.base_url,
                    await self.driver(),
                )
            )
        if self.jobs:
            jobs, self.jobs = self.jobs, []
            await self.store.enqueue(self.conn, jobs)


class FhirStore:
    """The embedded FHIR R4 store (domain layer: no HTTP here)."""

    def __init__(
        self,
        db: Database,
        *,
        base_url: str = "http://localhost/fhir",
        allow_external_references: bool = True,
        enqueue: Enqueue | None = None,
    ) -> None:
        self.db = db
        self.base_url = base_url.rstrip("/")
        self.allow_external_references = allow_external_references
        self._enqueue = enqueue
        self.analyzing: asyncio.Task[None] | None = None  # the running post-bulk ANALYZE, if any

    def after_bulk_write(self, written: int) -> None:
        """After a committed transaction that wrote many resources, refresh PostgreSQL's planner
        statistics in the background. Until autovacuum gets round to it (a minute or more), plans
        made with the old row counts turned the LTFU look-ups into scans taking tens of seconds."""
        if written < ANALYZE_AFTER or not self.db.is_postgresql:
            return
        if self.analyzing is None or self.analyzing.done():
            self.analyzing = asyncio.get_running_loop().create_task(self._analyze())

    async def _analyze(self) -> None:
        try:
            async with self.db.transaction() as conn:
                await conn.execute(text(f"ANALYZE {', '.join(t.name for t in _INDEXED_TABLES)}"))
        except Exception:  # best effort: autovacuum will do it later anyway
            log.warning("ANALYZE after a bulk write failed", exc_info=True)

    async def enqueue(self, conn: AsyncConnection, jobs: Sequence[NewJob]) -> None:
        if self._enqueue is not None:
            await self._enqueue(conn, jobs)
            return
        from cht_interop.delivery.outbox import enqueue

        await enqueue(conn, jobs)

    def _base(self, base_url: str | None) -> str:
        return (base_url or self.base_url).rstrip("/")

    # ---- writes ----

    async def create(
        self,
        resource: Resource,
        *,
        resource_type: str | None = None,
        if_none_exist: str | None = None,
        base_url: str | None = None,
        jobs: Sequence[NewJob] = (),
    ) -> WriteOutcome:
        check_resource(resource, resource_type)
        rtype = resource["resourceType"]
        async with self.db.transaction() as conn:
            s = WriteSession(self, conn, self._base(base_url))
            if if_none_exist:
                existing = await self._conditional_hit(s, rtype, if_none_exist)
                if existing is not None:
                    return existing
            resource.pop("id", None)
            out = await s.create(resource)
            s.jobs.extend(jobs)
            await s.finish()
            return out

    async def _conditional_hit(self, s: WriteSession, rtype: str, condition: str) -> WriteOutcome | None:
        params = parse_match_url(condition if "?" in condition else f"{rtype}?{condition}")[1]
        await s.guard(rtype, params)
        ids = await s.search_ids(rtype, params)
        if len(ids) > 1:
            raise PreconditionFailed(
                f'HAPI-0958: Failed to CREATE {rtype} with match URL "{condition}" because this search '
                "matched 2 resources"
            )
        if ids:
            found = await s.current(rtype, ids[0])
            assert found is not None
            return WriteOutcome(found, created=False, changed=False)
        return None

    async def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: Resource,
        *,
        if_match: str | None = None,
        base_url: str | None = None,
        jobs: Sequence[NewJob] = (),
    ) -> WriteOutcome:
        try:
            async with self.db.transaction() as conn:
                s = WriteSession(self, conn, self._base(base_url))
                out = await s.update(resource_type, resource_id, resource, if_match=if_match)
                s.jobs.extend(jobs)
                await s.finish()
                return out
        except IntegrityError:
            # two concurrent update-as-create of the same client id: the loser sees the PK clash
            raise VersionConflict(
                f"HAPI-0550: {resource_type}/{resource_id} was created concurrently by another request; retry"
            ) from None

    async def conditional_update(
        self,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        resource: Resource,
        *,
        base_url: str | None = None,
    ) -> WriteOutcome:
        check_resource(resource, resource_type)
        async with self.db.transaction() as conn:
            s = WriteSession(self, conn, self._base(base_url))
            await s.guard(resource_type, params)
            ids = await s.search_ids(resource_type, params)
            if len(ids) > 1:
                raise PreconditionFailed(
                    f'HAPI-0988: Failed to UPDATE resource with match URL "{resource_type}?..." because this '
                    "search matched 2 resources"
                )
            if ids:
                body_id = resource.get("id")
                if body_id is not None and body_id != ids[0]:
                    raise InvalidRequest(
                        f"HAPI-2279: Failed to UPDATE resource with match URL because the matching resource "
                        f"has ID {ids[0]} but the body has ID {body_id}"
                    )
                resource["id"] = ids[0]
                out = await s.update(resource_type, ids[0], resource)
            elif resource.get("id"):
                out = await s.update(resource_type, str(resource["id"]), resource)
            else:
                out = await s.create(resource)
            await s.finish()
            return out

    async def delete(self, resource_type: str, resource_id: str) -> DeleteOutcome:
        async with self.db.transaction() as conn:
            s = WriteSession(self, conn, self.base_url)
            out = await s.delete(resource_type, resource_id)
            await s.finish()
            return out

    async def conditional_delete(
        self, resource_type: str, params: Sequence[tuple[str, str]]
    ) -> DeleteOutcome:
        async with self.db.transaction() as conn:
            s = WriteSession(self, conn, self.base_url)
            ids = await s.search_ids(resource_type, params)
            if len(ids) > 1:
                raise PreconditionFailed(
                    f'HAPI-0636: Failed to DELETE resource with match URL "{resource_type}?..." because this '
                    "search matched 2 resources"
                )
            if not ids:
                return DeleteOutcome("Unable to find resource matching URL. Nothing deleted.", deleted=False)
            out = await s.delete(resource_type, ids[0])
            await s.finish()
            return out

    # ---- reads ----

    async def read(self, resource_type: str, resource_id: str) -> Stored:
        async with self.db.connect() as conn:
            row = (
                await conn.execute(
                    select(R.c.version_id, R.c.last_updated, R.c.deleted, R.c.content).where(
                        R.c.res_type == resource_type, R.c.res_id == resource_id
                    )
                )
            ).first()
        if row is None:
            raise ResourceNotFound(f"HAPI-2001: Resource {resource_type}/{resource_id} is not known")
        if row.deleted:
            raise ResourceGone(
                f"HAPI-2244: Resource was deleted at {format_instant(row.last_updated)}",
                headers={"ETag": f'W/"{row.version_id}"'},
            )
        return Stored(
            resource_type, resource_id, row.version_id, row.last_updated, False, orjson.loads(row.content)
        )

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> Stored:
        try:
            vid = int(version_id)
        except ValueError:
            raise ResourceNotFound(
                f'HAPI-0979: Version "{version_id}" is not valid for resource {resource_type}/{resource_id}'
            ) from None
        async with self.db.connect() as conn:
            row = (
                await conn.execute(
                    select(V.c.last_updated, V.c.deleted, V.c.content).where(
                        V.c.res_type == resource_type, V.c.res_id == resource_id, V.c.version_id == vid
                    )
                )
            ).first()
        if row is None:
            raise ResourceNotFound(
                f'HAPI-0979: Version "{version_id}" is not known for resource {resource_type}/{resource_id}'
            )
        if row.deleted:
            raise ResourceGone(f"HAPI-2244: Resource was deleted at {format_instant(row.last_updated)}")
        return Stored(resource_type, resource_id, vid, row.last_updated, False, orjson.loads(row.content))

    async def history(
        self, resource_type: str, resource_id: str, *, base_url: str | None = None, count: int | None = None
    ) -> Resource:
        base = self._base(base_url)
        async with self.db.connect() as conn:
            stmt = (
                select(V.c.version_id, V.c.last_updated, V.c.deleted, V.c.content)
                .where(V.c.res_type == resource_type, V.c.res_id == resource_id)
                .order_by(V.c.version_id.desc())
            )
            rows = list(await conn.execute(stmt))
        if not rows:
            raise ResourceNotFound(f"HAPI-2001: Resource {resource_type}/{resource_id} is not known")
        entries = []
        for row in rows[: count or len(rows)]:
            full = f"{base}/{resource_type}/{resource_id}"
            entry: Resource = {"fullUrl": full}
            if row.content is not None:
                entry["resource"] = orjson.loads(row.content)
            method = "DELETE" if row.deleted else ("POST" if row.version_id == 1 else "PUT")
            entry["request"] = {
                "method": method,
                "url": f"{resource_type}/{resource_id}" if method != "POST" else resource_type,
            }
            entry["response"] = {
                "status": "200 OK" if row.version_id > 1 or row.deleted else "201 Created",
                "etag": f'W/"{row.version_id}"',
                "lastModified": format_instant(row.last_updated),
            }
            entries.append(entry)
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": format_instant(now_us())},
            "type": "history",
            "total": len(rows),
            "link": [{"relation": "self", "url": f"{base}/{resource_type}/{resource_id}/_history"}],
            "entry": entries,
        }

    async def search(
        self, resource_type: str, params: Iterable[tuple[str, str]], *, base_url: str | None = None
    ) -> Resource:
        q = parse_query(resource_type, params)
        async with self.db.connect() as conn:
            return await self.search_on(conn, q, self._base(base_url))

    async def search_on(self, conn: AsyncConnection, q: SearchQuery, base: str) -> Resource:
        driver = await Driver.of(conn)
        where, where_params = where_sql(q, base)
        total = None
        if q.total != "none" or q.summary_count:
            rows = await driver.fetchall(
                f"SELECT count(*) FROM fhir_resource WHERE {where}", tuple(where_params)
            )
            total = int(rows[0][0])
        entries: list[Resource] = []
        fetched = 0
        if not q.summary_count and q.count > 0:
            order, order_params = order_sql(q)
            sql = (
                "SELECT fhir_resource.res_id, fhir_resource.content FROM fhir_resource "
                f"WHERE {where} ORDER BY {order} LIMIT ?"
            )
            params = [*where_params, *order_params, q.count + 1]
            if q.offset:
                sql += " OFFSET ?"
                params.append(q.offset)
            rows = await driver.fetchall(sql, tuple(params))
            fetched = len(rows)
            for res_id, content in rows[: q.count]:
                entries.append(
                    {
                        "fullUrl": f"{base}/{q.resource_type}/{res_id}",
                        "resource": orjson.loads(content),
                        "search": {"mode": "match"},
                    }
                )
        if entries and (q.includes or q.revincludes):
            entries += await self._included(driver, q, [e["resource"]["id"] for e in entries], base)
        if q.elements:
            for e in entries:
                if e["search"]["mode"] == "match":
                    e["resource"] = subset(e["resource"], q.elements)
        bundle: Resource = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": format_instant(now_us())},
            "type": "searchset",
        }
        if total is not None:
            bundle["total"] = total
        links = [{"relation": "self", "url": self_link(base, q)}]
        if fetched > q.count:
            links.append({"relation": "next", "url": page_link(base, q, q.offset + q.count)})
        if q.offset > 0 and not q.summary_count:
            links.append({"relation": "previous", "url": page_link(base, q, max(0, q.offset - q.count))})
        bundle["link"] = links
        if entries:
            bundle["entry"] = entries
        return bundle

    async def _included(self, driver: Driver, q: SearchQuery, ids: list[str], base: str) -> list[Resource]:
        """Entries (search mode ``include``) for the _include/_revinclude of one page of matches."""
        wanted: list[tuple[str, str]] = []
        for _src, param, target in q.includes:
            for chunk in _chunked(ids):
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
            for chunk in _chunked(ids):
                wanted += await driver.fetchall(
                    "SELECT res_type, res_id FROM fhir_reference WHERE res_type = ? AND param = ? "
                    f"AND target_type = ? AND target_id IN ({markers(len(chunk))})",
                    (src, param, q.resource_type, *chunk),
                )
        seen = {(q.resource_type, i) for i in ids}
        keys = [k for k in dict.fromkeys((str(t), str(i)) for t, i in wanted) if k not in seen]
        found: list[Any] = []
        for sql, key_params in live_key_queries(keys, columns="seq, res_type, res_id, content"):
            found += await driver.fetchall(sql, key_params)
        return [
            {
                "fullUrl": f"{base}/{res_type}/{res_id}",
                "resource": orjson.loads(content),
                "search": {"mode": "include"},
            }
            for _seq, res_type, res_id, content in sorted(found, key=lambda row: row[0])
        ]

    async def search_ids(self, resource_type: str, params: Sequence[tuple[str, str]]) -> list[str]:
        """Ids matching a match URL's params (no paging), for callers that only need identity."""
        q = parse_query(resource_type, params, match_url=True)
        async with self.db.connect() as conn:
            return await matching_ids(await Driver.of(conn), q, self.base_url)

    # ---- bundles ----

    async def process_bundle(
        self,
        bundle: Any,
        *,
        base_url: str | None = None,
        jobs: Sequence[NewJob] = (),
        return_representation: bool = False,
        trusted: Collection[str] = (),
    ) -> Resource:
        """``trusted``: fullUrls of entries built by our own code, not taken from a client; their
        resources skip schema validation (see :meth:`FhirClient.transaction`)."""
        from cht_interop.fhir.bundles import process_batch, process_transaction

        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise InvalidRequest("HAPI-0339: Unable to process request, expected a Bundle resource")
        btype = bundle.get("type")
        if btype == "transaction":
            return await process_transaction(
                self, bundle, self._base(base_url), jobs, return_representation, trusted=trusted
            )
        if btype == "batch":
            if jobs:
                raise InvalidRequest("Outbox jobs can only accompany a transaction Bundle")
            return await process_batch(
                self, bundle, self._base(base_url), return_representation, trusted=trusted
            )
        raise InvalidRequest(
            f"HAPI-0527: Unable to process bundle of type {btype!r}: only batch and transaction are supported"
        )


def subset(resource: Resource, elements: Sequence[str]) -> Resource:
    """_elements: the named top-level elements plus the mandatory ones, tagged SUBSETTED as HAPI does."""
    keep = {"resourceType", "id", "meta", *elements}
    out = {k: v for k, v in resource.items() if k in keep}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [
        *meta.get("tag", []),
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"},
    ]
    out["meta"] = meta
    return out


def self_link(base: str, q: SearchQuery) -> str:
    from urllib.parse import urlencode

    params = list(q.params)
    if q.offset:
        params.append(("_offset", str(q.offset)))
    qs = urlencode(params)
    return f"{base}/{q.resource_type}" + (f"?{qs}" if qs else "")


def page_link(base: str, q: SearchQuery, offset: int) -> str:
    return f"{base}/{q.resource_type}?_page={encode_cursor(q, offset)}"


__all__ = [
    "DeleteOutcome",
    "FhirError",
    "FhirStore",
    "Stored",
    "WriteOutcome",
    "WriteSession",
    "outcome_info",
    "parse_etag",
]
