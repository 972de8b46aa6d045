"""batch and transaction Bundles (FHIR R4 http.html#transaction, as HAPI runs them).

A transaction runs in one database transaction: DELETE → POST → PUT → PATCH → GET, ``urn:uuid``
fullUrls rewritten to the ids the server assigns, ``ifNoneExist`` and match URLs handled by
``conditional`` (the same code and messages as the REST interactions), a PATCH entry's patch (a
JSON Patch ``Binary`` or FHIRPath Patch ``Parameters``) read and applied by ``patch``, and any
failing entry fails the whole request with that entry's status (nothing is written). Plain
creates are staged on one :class:`WriteSession` and written with one executemany per table; a big
transaction pauses the garbage collector while it runs and reports its size to the background
ANALYZE once committed. A batch runs each entry as a transaction of its own.

Bundles sit above the write session, conditional operations and reads, and below the store
facade (``FhirStore.process_bundle`` calls :func:`process_bundle`); they never import the store.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir import conditional, patch
from cht_interop.fhir.datetimes import format_instant
from cht_interop.fhir.errors import (
    FhirError,
    InvalidRequest,
    ResourceGone,
    ResourceNotFound,
)
from cht_interop.fhir.outcomes import Resource, Stored, new_bundle, outcome_info
from cht_interop.fhir.reads import search_on
from cht_interop.fhir.registry import RESOURCE_TYPES, references
from cht_interop.fhir.search import parse_match_url, parse_query, parse_query_string
from cht_interop.fhir.session import StoreContext, WriteSession
from cht_interop.fhir.validation import check_resource
from cht_interop.kit.fair import Breather, off_loop
from cht_interop.kit.gc import GC_PAUSE_ENTRIES, gc_paused

# SQLite: transactions of this many plain creates stage their rows before taking the writer
PREPARE_APART_ENTRIES = GC_PAUSE_ENTRIES
# a transaction with up to this many updates and conditional entries reads (PostgreSQL: locks)
# their rows at its start, in one round trip each (``_lock_ahead``); a bigger one entry by entry,
# not to hold every current version in memory at once
LOCK_AHEAD_ENTRIES = 1000
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_REASON = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


def status_line(status: int) -> str:
    """``201 Created``: a Bundle response entry's status."""
    return _REASON.get(status) or f"{status} {HTTPStatus(status).phrase}"


def _entries(bundle: Resource) -> list[Resource]:
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise InvalidRequest("Bundle.entry must be an array")
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("request"), dict):
            raise InvalidRequest(
                f"HAPI-0541: Bundle.entry[{i}] has no request", expression=[f"Bundle.entry[{i}]"]
            )
        method = e["request"].get("method")
        url = e["request"].get("url")
        if not isinstance(method, str) or method not in _ORDER:  # a list or object is no method
            raise InvalidRequest(
                f"HAPI-0542: Bundle.entry[{i}].request.method {method!r} is not valid",
                expression=[f"Bundle.entry[{i}].request.method"],
            )
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"Bundle.entry[{i}].request.url is required")
        for key in ("ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince"):
            if e["request"].get(key) is not None and not isinstance(e["request"][key], str):
                where = f"Bundle.entry[{i}].request.{key}"
                raise InvalidRequest(f"{where} must be a string", expression=[where])
        if e.get("fullUrl") is not None and not isinstance(e["fullUrl"], str):
            where = f"Bundle.entry[{i}].fullUrl"
            raise InvalidRequest(f"{where} must be a string", expression=[where])
    return entries


def _relative(url: str, base: str) -> str:
    if url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    elif "://" in url:
        url = urlsplit(url).path.rsplit("/fhir/", 1)[-1] + (
            f"?{urlsplit(url).query}" if urlsplit(url).query else ""
        )
    return url.lstrip("/")


@dataclass(slots=True)
class _Request:
    """An entry's request as read once, before the transaction: what the read-ahead of its rows
    (``_lock_ahead``) and the entries' loop both go by."""

    method: str
    url: str  # relative to the base
    rtype: str = ""  # a POST's or PUT's resource type, as its URL names it
    rid: str = ""  # a plain PUT's id ("": none, a create)
    condition: conditional.Params | None = None  # a conditional create's or update's match parameters


def _read_request(e: Resource, base: str) -> _Request:
    """``e``'s request (checked by ``_entries``): method, relative URL, and for a POST or PUT its
    type and its match parameters or id."""
    req = e["request"]
    method, url = req["method"], _relative(req["url"], base)
    if method == "POST":
        rtype = url.split("?")[0].rstrip("/")
        cond = req.get("ifNoneExist")
        return _Request(
            method, url, rtype, condition=conditional.create_params(rtype, cond) if cond else None
        )
    if method == "PUT" and "?" in url:
        rtype, params = parse_match_url(url)
        return _Request(method, url, rtype, condition=params)
    if method == "PUT":
        rtype, _, rest = url.partition("/")
        return _Request(method, url, rtype, rid=rest.split("/")[0])
    return _Request(method, url)


def _response(stored: Stored, status: int, representation: bool) -> Resource:
    entry: Resource = {
        "response": {
            "status": status_line(status),
            "location": stored.location,
            "etag": stored.etag,
            "lastModified": format_instant(stored.last_updated),
        }
    }
    if representation and stored.resource is not None:
        entry["resource"] = stored.resource
    return entry


def _rewrite(node: Any, mapping: dict[str, str]) -> list[tuple[str, Resource]]:
    """Rewrite references to the Bundle's fullUrls; return every Reference object (path, object)."""
    found = references(node)
    if mapping:
        for _path, ref in found:
            target = mapping.get(ref["reference"])
            if target is not None:
                ref["reference"] = target
    return found


def _bundle(kind: str, entries: list[Resource]) -> Resource:
    out = new_bundle(kind)
    if entries:
        out["entry"] = entries
    return out


async def process_bundle(
    ctx: StoreContext,
    bundle: Any,
    base: str,
    *,
    jobs: Sequence[NewJob] = (),
    representation: bool = False,
    trusted: Collection[str] = (),
) -> Resource:
    """A batch or transaction Bundle; ``jobs`` (outbox jobs) only with a transaction.
    ``trusted``: fullUrls of entries built by our own code, not taken from a client; their
    resources skip schema validation (see :meth:`FhirClient.transaction`)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidRequest("HAPI-0339: Unable to process request, expected a Bundle resource")
    btype = bundle.get("type")
    if btype == "transaction":
        return await process_transaction(ctx, bundle, base, jobs, representation, trusted=trusted)
    if btype == "batch":
        if jobs:
            raise InvalidRequest("Outbox jobs can only accompany a transaction Bundle")
        return await process_batch(ctx, bundle, base, representation, trusted=trusted)
    raise InvalidRequest(
        f"HAPI-0527: Unable to process bundle of type {btype!r}: only batch and transaction are supported"
    )


async def process_transaction(
    ctx: StoreContext,
    bundle: Resource,
    base: str,
    jobs: Sequence[NewJob],
    representation: bool,
    *,
    first_index: int = 0,
    trusted: Collection[str] = (),
) -> Resource:
    def _entry_error(exc: FhirError, i: int) -> FhirError:
        return _label(exc, i + first_index)

    entries = _entries(bundle)
    results: list[Resource | None] = [None] * len(entries)
    # a big Bundle's millions of objects live to the end: the collector's full passes over them,
    # holding the GIL, would stall the event loop even while a worker thread checks (kit/gc.py)
    async with gc_paused(len(entries) >= GC_PAUSE_ENTRIES):
        # the processing order and the creates' validation need no database: before the transaction
        # (which holds SQLite's write lock), off the event loop when there are many (kit/fair.py)
        order, requests, checked = await off_loop(lambda: _plan(entries, base, trusted), items=len(entries))
        apart = ctx.db.is_sqlite and await off_loop(lambda: _prepared_apart(entries), items=len(entries))
        preallocated: list[int] | None = None
        bulk = len(entries) >= PREPARE_APART_ENTRIES  # small writers go first (db/writers.py)
        if apart:
            # the ids first, in a transaction of their own (a failed Bundle leaves a gap in them,
            # as a PostgreSQL sequence does), then every row staged on a reading connection
            async with ctx.db.transaction(bulk=True) as conn:
                preallocated = await WriteSession(ctx, conn, base).allocate(len(entries))
        breather = Breather()
        async with ctx.db.connect() if apart else ctx.db.transaction(bulk=bulk) as conn:
            s = WriteSession(ctx, conn, base)
            if not apart:  # apart: plain creates, on a reading connection; nothing to read ahead
                await _lock_ahead(s, requests)
            mapping: dict[str, str] = {}
            creates: list[tuple[int, Resource]] = []
            puts: list[tuple[int, Resource, str, str | None]] = []
            patches: list[tuple[int, str, str | None, list[tuple[str, str]], patch.Document]] = []
            gets: list[int] = []
            for i in order:
                await breather.breathe()
                e, r = entries[i], requests[i]
                method, url = r.method, r.url
                try:
                    if method == "DELETE":
                        results[i] = await _delete(s, url)
                    elif method == "POST":
                        res = _entry_resource(e, i)
                        if i in checked:
                            if (invalid := checked[i]) is not None:
                                raise invalid
                        elif not (trusted and e.get("fullUrl") in trusted):
                            check_resource(res, r.rtype)
                        elif res.get("resourceType") != r.rtype or res["resourceType"] not in RESOURCE_TYPES:
                            raise InvalidRequest(f"Bundle.entry[{i}]: resourceType does not match {url}")
                        if r.condition is not None:
                            condition = e["request"]["ifNoneExist"]
                            hit = await conditional.create_match(s, r.rtype, condition, r.condition)
                            if hit is not None:
                                if e.get("fullUrl"):
                                    mapping[e["fullUrl"]] = f"{hit.stored.resource_type}/{hit.stored.id}"
                                results[i] = _response(hit.stored, 200, representation)
                                continue
                        res.pop("id", None)
                        creates.append((i, res))
                    elif method == "PUT":
                        res = _entry_resource(e, i)
                        rtype = r.rtype
                        if r.condition is not None:
                            rid = await conditional.update_target(s, rtype, r.condition, res)
                        else:
                            rid = r.rid
                        if not rid:
                            puts.append((i, res, rtype, None))
                        else:
                            if e.get("fullUrl"):
                                mapping[e["fullUrl"]] = f"{rtype}/{rid}"
                            puts.append((i, res, rtype, str(rid)))
                    elif method == "PATCH":
                        ops = patch.from_entry(e.get("resource"))
                        path, _, query = url.partition("?")
                        rtype, _, rid = path.rstrip("/").partition("/")
                        if rtype not in RESOURCE_TYPES or ("/" in rid) or not (rid or query):
                            raise InvalidRequest(f"Invalid PATCH url: {url}")
                        params = parse_match_url(url)[1] if query else []
                        patches.append((i, rtype, rid or None, params, ops))
                    else:
                        gets.append(i)
                except FhirError as exc:
                    raise _entry_error(exc, i) from None
            n_new = len(creates) + sum(1 for p in puts if p[3] is None)
            seqs = preallocated if preallocated is not None else await s.allocate(n_new)
            seq_iter = iter(seqs)
            planned: list[tuple[int, Resource, int]] = []
            for i, res in creates:
                seq = next(seq_iter)
                full = entries[i].get("fullUrl")
                if full:
                    mapping[full] = f"{res['resourceType']}/{seq}"
                planned.append((i, res, seq))
            # a conditional PUT that matched nothing creates: references to its fullUrl point to it
            created_by_put: dict[int, int] = {}
            for i, _res, rtype, rid in puts:
                if rid is None:
                    created_by_put[i] = next(seq_iter)
                    if full := entries[i].get("fullUrl"):
                        mapping[full] = f"{rtype}/{created_by_put[i]}"
            # the references of a create are walked once, for the rewrite and for their resolution;
            # an untrusted PUT's are walked again by the store (its validation may drop elements), a
            # trusted one's (ours, not validated: an accepted Task) are handed over as a create's
            refs = []
            for _i, res, _s in planned:
                await breather.breathe()
                refs.append(_rewrite(res, mapping))
            put_refs: dict[int, list[tuple[str, Resource]]] = {}
            for i, res, _t, _r in puts:
                found = _rewrite(res, mapping)
                if trusted and entries[i].get("fullUrl") in trusted:
                    put_refs[i] = found
            for (i, res, seq), found in zip(planned, refs, strict=True):
                await breather.breathe()
                s.entry_label = f"Bundle.entry[{i + first_index}]: "
                try:
                    out = await s.create(res, seq=seq, references=found)
                except FhirError as exc:
                    raise _entry_error(exc, i) from None
                results[i] = _response(out.stored, 201, representation)
            for i, res, rtype, rid in puts:
                await breather.breathe()
                s.entry_label = f"Bundle.entry[{i + first_index}]: "
                try:
                    if rid is None:
                        out = await s.create(res, seq=created_by_put[i])
                    else:
                        out = await s.update(
                            rtype,
                            rid,
                            res,
                            if_match=entries[i]["request"].get("ifMatch"),
                            trusted=i in put_refs,
                            references=put_refs.get(i),
                        )
                except FhirError as exc:
                    raise _entry_error(exc, i) from None
                results[i] = _response(out.stored, out.status, representation)
            for i, rtype, rid, params, ops in patches:
                await breather.breathe()
                s.entry_label = f"Bundle.entry[{i + first_index}]: "
                try:
                    rid = rid or await conditional.patch_target(s, rtype, params)
                    out = await patch.patch(s, rtype, rid, ops, if_match=entries[i]["request"].get("ifMatch"))
                except FhirError as exc:
                    raise _entry_error(exc, i) from None
                results[i] = _response(out.stored, out.status, representation)
            s.jobs.extend(jobs)
            if not apart:
                await s.finish()
                for i in gets:
                    try:
                        results[i] = await _get(s, requests[i].url, base)
                    except FhirError as exc:
                        raise _entry_error(exc, i) from None
        if apart:  # SQLite's one writer is held only while the ready rows are written
            async with ctx.db.transaction(bulk=True) as conn:
                s.move_to(conn)
                await s.finish()
    ctx.analyzer.after_write(s.written)
    return _bundle("transaction-response", [r or {} for r in results])


async def _lock_ahead(s: WriteSession, requests: list[_Request]) -> None:
    """The conditional entries' guards (PostgreSQL), their match URLs' searches, then the rows the
    PUTs update, each set in one statement (the entries then find them held and answered) instead
    of one round trip per entry: a group-committed batch of CHT reports was a chain of ~4 round
    trips per report (on SQLite each a hop to the driver's thread, and CPU on both sides).
    An entry this cannot read is left to the entries' loop, which reports it."""
    conditions: list[tuple[str, conditional.Params]] = []  # conditional creates and updates
    updates: set[int] = set()  # which of them are updates (they lock what they match)
    rows: set[tuple[str, str]] = set()
    for r in requests:
        if r.condition is not None:
            if r.method == "PUT":
                updates.add(len(conditions))
            conditions.append((r.rtype, r.condition))
        elif r.method == "PUT" and r.rtype in RESOURCE_TYPES and r.rid:
            rows.add((r.rtype, r.rid))
    if len(conditions) + len(rows) > LOCK_AHEAD_ENTRIES:
        return
    await conditional.guard_all(s, conditions)
    found = await s.search_ids_ahead(conditions)
    rows.update((conditions[i][0], ids[0]) for i, ids in enumerate(found) if i in updates and len(ids) == 1)
    await s.lock_rows(rows)


def _prepared_apart(entries: list[Resource]) -> bool:
    """Whether a SQLite transaction can stage every row before it takes the writer: a big one of
    plain creates only (no ``ifNoneExist``, no conditional reference, no Subscription), whose
    staging reads nothing that the write could invalidate except references, which the write phase
    checks again (``WriteSession.flush``). Others stage inside the write transaction."""
    if len(entries) < PREPARE_APART_ENTRIES:
        return False
    for e in entries:
        req, res = e["request"], e.get("resource")
        if req["method"] != "POST" or req.get("ifNoneExist") or not isinstance(res, dict):
            return False
        if res.get("resourceType") == "Subscription" or _has_conditional_reference(res):
            return False
    return True


def _has_conditional_reference(node: Any) -> bool:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and "?" in ref:
            return True
        return any(_has_conditional_reference(v) for v in node.values() if isinstance(v, (dict, list)))
    if isinstance(node, list):
        return any(_has_conditional_reference(v) for v in node if isinstance(v, (dict, list)))
    return False


def _plan(
    entries: list[Resource], base: str, trusted: Collection[str]
) -> tuple[list[int], list[_Request], dict[int, FhirError | None]]:
    """The entries' processing order (DELETE, POST, PUT/PATCH, GET), their requests as read once,
    and the creates' checks."""
    requests = [_read_request(e, base) for e in entries]
    order = sorted(range(len(entries)), key=lambda i: _ORDER[requests[i].method])
    return order, requests, _check_creates(entries, requests, trusted)


def _check_creates(
    entries: list[Resource], requests: list[_Request], trusted: Collection[str]
) -> dict[int, FhirError | None]:
    """The schema check (and lenient repairs) of every POST entry's resource that is not trusted,
    by entry index: None when it passed, else its error, raised when the entry's turn comes (so a
    Bundle's first failing entry, in processing order, is still the one reported)."""
    checked: dict[int, FhirError | None] = {}
    for i, (e, r) in enumerate(zip(entries, requests, strict=True)):
        res = e.get("resource")
        if r.method != "POST" or not isinstance(res, dict):
            continue
        if trusted and e.get("fullUrl") in trusted:
            continue
        try:
            check_resource(res, r.rtype)
            checked[i] = None
        except FhirError as exc:
            checked[i] = exc
    return checked


def _entry_resource(e: Resource, i: int) -> Resource:
    res = e.get("resource")
    if not isinstance(res, dict):
        raise InvalidRequest(f"Bundle.entry[{i}] has no resource", expression=[f"Bundle.entry[{i}].resource"])
    return res


def _label(exc: FhirError, i: int) -> FhirError:
    exc.diagnostics = f"Bundle.entry[{i}]: {exc.diagnostics}"
    if exc.expression is None:
        exc.expression = [f"Bundle.entry[{i}]"]
    return exc


async def _delete(s: WriteSession, url: str) -> Resource:
    if "?" in url:
        rtype, params = parse_match_url(url)
        target = await conditional.delete_target(s, rtype, params)
        if target is None:
            return {"response": {"status": "204 No Content"}}
        rid = target
    else:
        parts = url.split("/")
        if len(parts) != 2 or parts[0] not in RESOURCE_TYPES:
            raise InvalidRequest(f"Invalid DELETE url: {url}")
        rtype, rid = parts
    out = await s.delete(rtype, rid)
    return {"response": {"status": "200 OK", "outcome": outcome_info(out.message)}}


async def _get(s: WriteSession, url: str, base: str) -> Resource:
    path, _, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in RESOURCE_TYPES:
        raise ResourceNotFound(f"HAPI-0302: Unknown resource type in {url}")
    if len(parts) == 1:
        q = parse_query(parts[0], parse_query_string(query))
        found = await search_on(s.conn, q, base)
        return {"resource": found, "response": {"status": "200 OK"}}
    stored = await s.current(parts[0], parts[1])
    if stored is None:
        raise ResourceNotFound(f"HAPI-2001: Resource {parts[0]}/{parts[1]} is not known")
    if stored.deleted:
        raise ResourceGone(f"HAPI-2244: Resource was deleted at {format_instant(stored.last_updated)}")
    return {
        "resource": stored.resource,
        "response": {
            "status": "200 OK",
            "etag": stored.etag,
            "lastModified": format_instant(stored.last_updated),
        },
    }


async def process_batch(
    ctx: StoreContext,
    bundle: Resource,
    base: str,
    representation: bool,
    *,
    trusted: Collection[str] = (),
) -> Resource:
    """Each entry on its own; a failed entry carries its status and an OperationOutcome."""
    raw = bundle.get("entry", [])
    if not isinstance(raw, list):
        raise InvalidRequest("Bundle.entry must be an array")
    results: list[Resource] = []
    for i, e in enumerate(raw):
        try:
            single = {"resourceType": "Bundle", "type": "transaction", "entry": [e]}
            _entries(single)
            out = await process_transaction(
                ctx, single, base, (), representation, first_index=i, trusted=trusted
            )
            entry = out["entry"][0]
        except FhirError as exc:
            entry = {"response": {"status": status_line(int(exc.status)), "outcome": exc.to_outcome()}}
        results.append(entry)
    return _bundle("batch-response", results)


__all__ = ["process_batch", "process_bundle", "process_transaction", "status_line"]
