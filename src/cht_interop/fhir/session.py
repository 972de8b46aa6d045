"""The write unit: a :class:`WriteSession` stages the writes of one database transaction, flushes
them in batches and finishes with Subscription matching and the outbox.

- **stage**: ``create`` / ``update`` / ``delete`` apply HAPI's write rules (ids, versions,
  ``If-Match``, no-op updates, references via ``references``), stamp ``meta`` and extract the
  index rows; nothing is sent yet, so a transaction Bundle of 1,000 creates costs a handful of
  statements, not thousands. A ``requested`` rest-hook Subscription is activated at once, as a
  second version (HAPI does it asynchronously).
- **flush**: checks the queued references, then writes every staged row with one executemany or
  multi-row INSERT / COPY per table in one call into the driver (``sql.write_rows``), together
  with the Subscription criteria index. Searches within the session flush first.
- **finish**: flushes, matches the written resources against active Subscriptions on the same
  connection and enqueues the notification jobs (and the caller's jobs) there too: they commit or
  vanish with the resources that caused them.

:class:`StoreContext` is what every session of one store shares (database, base URL, settings,
where jobs go, the background ANALYZE); the store owns one and passes it down, so nothing below
the store imports it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db import Database
from cht_interop.db.driver import Driver, InsertBatch
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir import sql
from cht_interop.fhir.analyze import BulkAnalyzer
from cht_interop.fhir.datetimes import format_instant, now_us
from cht_interop.fhir.errors import FhirError, InvalidRequest, VersionConflict, delete_conflict
from cht_interop.fhir.index_rows import IndexRows, extract
from cht_interop.fhir.outcomes import DeleteOutcome, Resource, Stored, WriteOutcome, parse_etag
from cht_interop.fhir.references import RefCheck, check_references, resolve_references
from cht_interop.fhir.registry import RESOURCE_TYPES
from cht_interop.fhir.search import SearchQuery, parse_query
from cht_interop.fhir.subscriptions import index as sub_index
from cht_interop.fhir.subscriptions.criteria import Criteria, validate_subscription
from cht_interop.fhir.subscriptions.matching import match_writes
from cht_interop.fhir.validation import check_resource

Enqueue = Callable[[AsyncConnection, Sequence[NewJob]], Awaitable[Any]]
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# a match URL's search stops at the second match: one is the resource, two are too many (HAPI's 412)
MATCH_LIMIT = 2


@dataclass(slots=True)
class StoreContext:
    """What every write session of one store shares."""

    db: Database
    base_url: str
    allow_external_references: bool = True
    enqueue_jobs: Enqueue | None = None  # the outbox's enqueue unless replaced (tests)
    analyzer: BulkAnalyzer = field(init=False)  # the background ANALYZE after bulk writes

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.analyzer = BulkAnalyzer(self.db)

    def base(self, base_url: str | None) -> str:
        """The base URL of a request (the store's own when the caller has none)."""
        return (base_url or self.base_url).rstrip("/")

    async def enqueue(self, conn: AsyncConnection, jobs: Sequence[NewJob]) -> None:
        if self.enqueue_jobs is not None:
            await self.enqueue_jobs(conn, jobs)
            return
        await outbox.enqueue(conn, jobs)


@dataclass(slots=True)
class _Pending:
    stored: Stored
    seq: int
    is_new_row: bool  # INSERT into fhir_resource (else UPDATE)
    had_index: bool  # old index rows must be deleted first
    rows: IndexRows | None  # None for a delete
    match: bool  # run Subscription matching on it


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


@dataclass
class WriteSession:
    """Staged writes on one connection; ``flush`` sends them with one executemany per table."""

    ctx: StoreContext
    conn: AsyncConnection
    base_url: str
    pending: list[_Pending] = field(default_factory=list)
    staged: dict[tuple[str, str], Stored] = field(default_factory=dict)
    staged_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    row_seq: dict[tuple[str, str], int] = field(default_factory=dict)  # seq of stored rows read here
    ref_checks: list[RefCheck] = field(default_factory=list)  # see ``references``
    # Subscription writes for the criteria index: id, resource (None: deleted), parsed criteria
    sub_index_ops: list[tuple[str, Resource | None, Criteria | None]] = field(default_factory=list)
    # Subscriptions this session switches off (or to error): their index rows go after matching
    retiring: dict[str, tuple[Resource, Criteria | None]] = field(default_factory=dict)
    created_here: set[tuple[str, str]] = field(default_factory=set)  # resources this session created
    indexed_here: set[str] = field(default_factory=set)  # Subscriptions a flush of this session indexed
    entry_label: str = ""  # "Bundle.entry[i]: " while a Bundle entry is being written
    to_match: list[_Pending] = field(default_factory=list)
    jobs: list[NewJob] = field(default_factory=list)
    written: int = 0  # resources flushed so far
    guarded: set[str] = field(default_factory=set)  # conditional-write locks held (``conditional``)
    # rows locked ahead (``lock_rows``), each handed out once by ``current(lock=True)``
    locked: dict[tuple[str, str], Stored | None] = field(default_factory=dict)
    # match URLs searched ahead (``search_ids_ahead``): each answer handed out once, until a flush
    matched: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = field(default_factory=dict)
    _driver: Driver | None = None

    @property
    def allow_external_references(self) -> bool:
        return self.ctx.allow_external_references

    async def driver(self) -> Driver:
        """The raw driver connection, for the statements of the write path (see ``cht_interop.db.driver``)."""
        if self._driver is None:
            self._driver = await Driver.of(self.conn)
        return self._driver

    def move_to(self, conn: AsyncConnection) -> None:
        """Carry what was staged on a reading connection over to the write transaction that
        flushes it (a big SQLite transaction stages before it takes the one writer)."""
        self.conn, self._driver = conn, None

    # ---- ids and lookups ----

    async def allocate(self, n: int) -> list[int]:
        """``n`` new sequence numbers (a created resource's seq is also its server-assigned id)."""
        return await sql.allocate_seqs(await self.driver(), self.conn, n)

    async def current(self, rtype: str, rid: str, *, lock: bool = False) -> Stored | None:
        """The current version, staged in this session or stored (``lock``: FOR UPDATE on PG)."""
        if (rtype, rid) in self.staged:
            return self.staged[(rtype, rid)]
        if lock and (rtype, rid) in self.locked:
            # locked ahead: no other transaction changed it since; handed out once, as a write
            # of it is staged next (and a flush forgets the staged version)
            return self.locked.pop((rtype, rid))
        row = await sql.current_row(await self.driver(), rtype, rid, lock=lock)
        return self._stored(rtype, rid, row)

    def _stored(self, rtype: str, rid: str, row: tuple[Any, ...] | None) -> Stored | None:
        if row is None:
            return None
        version_id, last_updated, deleted, content, seq = row
        self.row_seq[(rtype, rid)] = int(seq)  # a row's seq never changes: no second look-up
        res = orjson.loads(content) if content is not None else None
        return Stored(rtype, rid, int(version_id), int(last_updated), bool(deleted), res)

    async def lock_rows(self, keys: Collection[tuple[str, str]]) -> None:
        """The rows a transaction will update, read all at once: one round trip instead of one per
        entry. PostgreSQL: FOR UPDATE, taken in one order so that two transactions updating the
        same rows queue instead of deadlocking; SQLite: inside its write transaction, where no
        other writer can change them."""
        wanted = sorted(k for k in keys if k not in self.staged and k not in self.locked)
        if not wanted:
            return
        rows = await sql.lock_current_rows(await self.driver(), wanted)
        for key, row in rows.items():  # a missing row is looked up again when it is written
            self.locked[key] = self._stored(key[0], key[1], row)

    async def search_ids(
        self, rtype: str, params: Sequence[tuple[str, str]], *, limit: int = MATCH_LIMIT
    ) -> list[str]:
        """Ids a match URL's params select, staged writes included (the session flushes first)."""
        await self.flush()
        ahead = self.matched.pop((rtype, tuple(params)), None) if limit == MATCH_LIMIT else None
        if ahead is not None:
            return ahead
        q = parse_query(rtype, params, match_url=True)
        return await sql.matching_ids(await self.driver(), q, self.base_url, limit=limit)

    async def search_ids_ahead(
        self, searches: Sequence[tuple[str, Sequence[tuple[str, str]]]]
    ) -> list[list[str]]:
        """``search_ids`` of many match URLs in one round trip, before anything is staged; the
        entries then find their answers here (and the ids are returned, in order). A write staged
        meanwhile voids them (a flush forgets them). A match URL this cannot parse is left to its
        entry, which reports it (no ids here)."""
        if self.pending:
            return [[] for _ in searches]
        at: list[int] = []
        queries: list[SearchQuery] = []
        for i, (rtype, params) in enumerate(searches):
            try:
                queries.append(parse_query(rtype, params, match_url=True))
            except FhirError:
                continue
            at.append(i)
        found = await sql.matching_ids_each(await self.driver(), queries, self.base_url, limit=MATCH_LIMIT)
        answers: list[list[str]] = [[] for _ in searches]
        for i, ids in zip(at, found, strict=True):
            rtype, params = searches[i]
            self.matched[(rtype, tuple(params))] = ids
            answers[i] = ids
        return answers

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
        await resolve_references(self, rtype, resource, references)
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
        references: list[tuple[str, Resource]] | None = None,
    ) -> WriteOutcome:
        """``trusted``: built by our own code (a Bundle entry listed as trusted): no schema check.
        ``references``: a trusted resource's Reference objects, when the caller collected them."""
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
        await resolve_references(self, rtype, resource, references if trusted else None)
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
        return await sql.seq_of(self.conn, rtype, rid)

    async def delete(self, rtype: str, rid: str) -> DeleteOutcome:
        current = await self.current(rtype, rid, lock=True)
        if current is None:
            return DeleteOutcome(f"Not deleted, resource {rtype}/{rid} does not exist.", deleted=False)
        if current.deleted:
            return DeleteOutcome(f"Not deleted, resource {rtype}/{rid} was already deleted.", deleted=False)
        await self.flush()
        ref = await sql.first_referrer(self.conn, rtype, rid)
        if ref is not None:
            raise delete_conflict(rtype, rid, ref.res_type, ref.res_id, ref.param)
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
            await resolve_references(self, rtype, resource)
        resource["id"] = rid
        meta = resource.get("meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        ts = now_us()
        meta["versionId"] = str(version)
        meta["lastUpdated"] = format_instant(ts)
        resource["meta"] = meta
        criteria = None
        if rtype == "Subscription":
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

    # ---- flush ----

    async def flush(self) -> None:
        """Send staged writes (with the Subscription criteria index), in an order that keeps the
        index exact."""
        await check_references(self)
        subscription_rows = await self._subscription_index()
        if not self.pending:
            await (await self.driver()).insert_many(subscription_rows)
            return
        pending, self.pending = self.pending, []
        self.matched = {}  # what was searched ahead may no longer match
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
            self.locked.pop(key, None)  # written here: a later look-up reads what was written
        self.written += len(final)
        await sql.write_rows(await self.driver(), list(final.values()), pending, subscription_rows)
        self.to_match.extend(p for p in pending if p.match)

    async def _subscription_index(self) -> list[InsertBatch]:
        """Drop the criteria-index rows of the Subscriptions written; return their new rows. Those
        switched off (not deleted) keep theirs until ``finish`` has matched (see there)."""
        if not self.sub_index_ops:
            return []
        ops, self.sub_index_ops = self.sub_index_ops, []
        latest = {sid: (res, crit) for sid, res, crit in ops}
        now: list[tuple[str, Resource | None, Criteria | None]] = []
        for sid, (res, crit) in latest.items():
            if res is not None and not sub_index.is_indexed(res):
                self.retiring[sid] = (res, crit)
            else:
                self.retiring.pop(sid, None)  # indexed again (or deleted) in this session
                now.append((sid, res, crit))
        if not now:
            return []
        # created in this session and not yet indexed by an earlier flush: no rows to remove
        fresh = {
            sid
            for sid, _r, _c in now
            if ("Subscription", sid) in self.created_here and sid not in self.indexed_here
        }
        self.indexed_here.update(sid for sid, _r, _c in now)
        return await sub_index.update(await self.driver(), now, fresh=fresh)

    async def finish(self) -> None:
        """Flush, match the written resources against active Subscriptions, enqueue every job.

        A Subscription this transaction switches off still matches the transaction's own writes:
        they happened while it was active (one instant; the completing Encounter and its follow-up's
        switch-off are one write). Its index rows are dropped only after the matching, and its
        notifications say they are owed (``notification_job``): delivered although it is off.
        A deleted Subscription leaves the index at once (nothing is left to deliver for).

        The notifications go first: a job the caller queues with them (switching a Subscription off
        with the same ordering key) must run after the notification this very write caused."""
        await self.flush()
        to_match, self.to_match = self.to_match, []
        retiring, self.retiring = self.retiring, {}
        if to_match:
            self.jobs[:0] = await match_writes(
                [(p.stored, p.rows) for p in to_match if p.rows],
                self.base_url,
                await self.driver(),
                owed=retiring.keys(),
            )
        if retiring:
            ops = [(sid, res, crit) for sid, (res, crit) in retiring.items()]
            await sub_index.update(await self.driver(), ops)
        if self.jobs:
            jobs, self.jobs = self.jobs, []
            await self.ctx.enqueue(self.conn, jobs)
