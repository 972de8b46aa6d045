"""The read side of the store: read, vread and search (history: ``history``), shaped as HAPI answers them.

Search returns a ``searchset`` Bundle: the total (unless ``_total=none``), one page of matches,
the ``_include`` / ``_revinclude`` resources of that page, ``_elements`` subsetting, and the
self / next / previous links (the next page's link carries the whole query in an opaque token, so
paging needs no server state). Every statement comes from ``sql``; nothing here writes.
Separate from the write path, which never needs any of it (a transaction Bundle's GET entries
call :func:`search_on` on the transaction's connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db import Database
from cht_interop.db.driver import Driver
from cht_interop.fhir import sql
from cht_interop.fhir.datetimes import format_instant
from cht_interop.fhir.errors import FhirError, ResourceGone, ResourceNotFound
from cht_interop.fhir.outcomes import Resource, Stored, new_bundle
from cht_interop.fhir.search import SearchQuery, encode_cursor
from cht_interop.fhir.search_sql import where_sql
from cht_interop.fhir.summary import elements_subset, summarize


async def read(db: Database, resource_type: str, resource_id: str) -> Stored:
    """The current version; 404 when unknown, 410 (with its ETag) when deleted."""
    async with db.connect() as conn:
        row = await sql.read_row(conn, resource_type, resource_id)
    found = _current(resource_type, resource_id, None if row is None else tuple(row))
    if isinstance(found, FhirError):
        raise found
    return found


async def read_many(db: Database, refs: Sequence[tuple[str, str]]) -> list[Stored | FhirError]:
    """:func:`read` of every (type, id), in order, on one connection with one statement per type:
    the answer for each, or the error :func:`read` would raise for it."""
    by_type: dict[str, list[str]] = {}
    for rtype, rid in refs:
        by_type.setdefault(rtype, []).append(rid)
    async with db.connect() as conn:
        driver = await Driver.of(conn)
        rows = {rtype: await sql.current_rows(driver, rtype, ids) for rtype, ids in by_type.items()}
    return [_current(rtype, rid, rows[rtype].get(rid)) for rtype, rid in refs]


def _current(resource_type: str, resource_id: str, row: tuple[Any, ...] | None) -> Stored | FhirError:
    """A current row (version_id, last_updated, deleted, content) as read answers it."""
    if row is None:
        return ResourceNotFound(f"HAPI-2001: Resource {resource_type}/{resource_id} is not known")
    version_id, last_updated, deleted, content = row
    if deleted:
        return ResourceGone(
            f"HAPI-2244: Resource was deleted at {format_instant(last_updated)}",
            headers={"ETag": f'W/"{version_id}"'},
        )
    return Stored(resource_type, resource_id, version_id, last_updated, False, orjson.loads(content))


async def vread(db: Database, resource_type: str, resource_id: str, version_id: str) -> Stored:
    """One version; 404 for an unknown or malformed version, 410 for the version of a delete."""
    try:
        vid = int(version_id)
    except ValueError:
        raise ResourceNotFound(
            f'HAPI-0979: Version "{version_id}" is not valid for resource {resource_type}/{resource_id}'
        ) from None
    async with db.connect() as conn:
        row = await sql.vread_row(conn, resource_type, resource_id, vid)
    if row is None:
        raise ResourceNotFound(
            f'HAPI-0979: Version "{version_id}" is not known for resource {resource_type}/{resource_id}'
        )
    if row.deleted:
        raise ResourceGone(f"HAPI-2244: Resource was deleted at {format_instant(row.last_updated)}")
    return Stored(resource_type, resource_id, vid, row.last_updated, False, orjson.loads(row.content))


async def search_on(conn: AsyncConnection, q: SearchQuery, base: str) -> Resource:
    """The ``searchset`` Bundle of ``q`` (one page), read on ``conn``."""
    driver = await Driver.of(conn)
    where = where_sql(q, base)
    total = None
    if q.total != "none" or q.summary_count:
        total = await sql.count_matches(driver, where)
    entries: list[Resource] = []
    fetched = 0
    if not q.summary_count and q.count > 0:
        rows = await sql.page_rows(driver, q, where)
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
        entries += await _included(driver, q, [e["resource"]["id"] for e in entries], base)
    if q.elements or q.summary != "false":
        for e in entries:
            if e["search"]["mode"] == "match":
                e["resource"] = view(e["resource"], q.summary, q.elements)
    bundle = new_bundle("searchset")
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


async def _included(driver: Driver, q: SearchQuery, ids: list[str], base: str) -> list[Resource]:
    """Entries (search mode ``include``) for the _include/_revinclude of one page of matches."""
    return [
        {
            "fullUrl": f"{base}/{res_type}/{res_id}",
            "resource": orjson.loads(content),
            "search": {"mode": "include"},
        }
        for _seq, res_type, res_id, content in await sql.included_rows(driver, q, ids)
    ]


def view(resource: Resource, summary: str, elements: Sequence[str] = ()) -> Resource:
    """What a search or read returns of ``resource`` under ``_summary`` / ``_elements`` (see
    ``summary``); ``_elements`` wins when both are given, as in HAPI (``RestfulServerUtils``)."""
    if elements:
        return elements_subset(resource, elements)
    return summarize(resource, summary)


def self_link(base: str, q: SearchQuery) -> str:
    """The search's own URL: its parameters as given, and the offset of this page."""
    params = list(q.params)
    if q.offset:
        params.append(("_offset", str(q.offset)))
    qs = urlencode(params)
    return f"{base}/{q.resource_type}" + (f"?{qs}" if qs else "")


def page_link(base: str, q: SearchQuery, offset: int) -> str:
    """The URL of the page of ``q`` that starts at ``offset`` (an opaque ``_page`` token)."""
    return f"{base}/{q.resource_type}?_page={encode_cursor(q, offset)}"
