"""The history interaction at its three levels (``[base]/_history``, ``[type]/_history``,
``[type]/[id]/_history``), answered as HAPI FHIR answers it.

- Parameters: ``_count`` (page size, default 20, at most 1000), ``_since`` (versions updated at
  or after an instant), ``_at`` (versions current at some moment of a date's span, with the date
  search prefixes ``ge``/``gt``/``le``/``lt``/``eq``); ``_since`` with ``_at`` is refused, as HAPI
  refuses it (HAPI-0553). A bad value is a 400 OperationOutcome.
- Order: newest version first (last updated, then type, id, version; HAPI's ``HistoryBuilder``).
- Entries (HAPI's ``R4BundleFactory``): ``fullUrl`` without version; ``resource`` except for the
  version that records a delete; ``request`` {POST for version 1, PUT after, DELETE for a delete;
  url ``Type/id/_history/n``}; ``response`` {``201 Created`` for version 1, else ``200 OK``,
  the ETag, lastModified}.
- ``total``: given when neither ``_since`` nor ``_at`` is (HAPI's default history count mode,
  ``CACHED_ONLY_WITHOUT_OFFSET``; ours is exact, HAPI's may be cached).
- Links: ``self`` (the request's own query), ``next`` / ``previous`` with an opaque ``_page``
  token that carries the filter and the page's boundary version (key paging, see ``sql_history``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from cht_interop.db import Database
from cht_interop.db.driver import Driver
from cht_interop.fhir import sql_history
from cht_interop.fhir.datetimes import format_instant, parse_range
from cht_interop.fhir.errors import InvalidRequest, ResourceNotFound
from cht_interop.fhir.outcomes import Resource, new_bundle
from cht_interop.fhir.search import DEFAULT_COUNT, MAX_COUNT
from cht_interop.fhir.sql_history import PageKey, VersionFilter

IGNORED = {"_format", "_pretty"}
_BAD_PAGE = "Invalid or expired paging token (_page)"


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """One history request: what it shows, the page size, and where this page starts."""

    filter: VersionFilter
    count: int = DEFAULT_COUNT
    after: PageKey | None = None  # the boundary version of this page (None: the first page)
    backward: bool = False  # a ``previous`` page: the versions just newer than ``after``
    params: tuple[tuple[str, str], ...] = ()  # as requested, for the self link


def parse_history(
    resource_type: str | None, resource_id: str | None, params: Iterable[tuple[str, str]]
) -> HistoryQuery:
    """The query of a history request; 400 for a bad ``_count``, ``_since``, ``_at`` or ``_page``."""
    params = tuple(params)
    page = next((v for k, v in params if k == "_page"), None)
    if page is not None:
        return _decode(resource_type, resource_id, page, params)
    count = DEFAULT_COUNT
    since: int | None = None
    at_low: int | None = None
    at_high: int | None = None
    for name, value in params:
        if name == "_count":
            count = _count(value)
        elif name == "_since":
            since = _instant(name, value)[0]
        elif name == "_at":
            low, high = _at(value)
            if low is not None:
                at_low = low if at_low is None else max(at_low, low)
            if high is not None:
                at_high = high if at_high is None else min(at_high, high)
    f = VersionFilter(resource_type, resource_id, since, at_low, at_high)
    if since is not None and f.has_at:
        raise InvalidRequest("HAPI-0553: Only one of _at and _since may be specified")
    return HistoryQuery(f, count, params=params)


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"Invalid _count value: {value!r} (an integer is required)") from None
    if n < 0:
        raise InvalidRequest(f"Invalid _count value: {value!r}")
    return min(n, MAX_COUNT)


def _instant(name: str, value: str) -> tuple[int, int]:
    span = parse_range(value)
    if span is None:
        raise InvalidRequest(f'HAPI-1882: Invalid date/time format: "{value}" (parameter {name})')
    return span


def _at(value: str) -> tuple[int | None, int | None]:
    """``_at``'s period as (low, high) µs, both inclusive, either open."""
    prefix = value[:2] if value[:2] in ("eq", "ge", "gt", "le", "lt", "sa", "eb") else "eq"
    low, high = _instant("_at", value[2:] if value.startswith(prefix) else value)
    if prefix in ("ge", "gt", "sa"):
        return (high if prefix != "ge" else low), None
    if prefix in ("le", "lt", "eb"):
        return None, (high - 1 if prefix == "le" else low - 1)
    return low, high - 1


# ---- paging tokens ------------------------------------------------------------------------------


def _encode(q: HistoryQuery, key: PageKey, backward: bool) -> str:
    f = q.filter
    data = {
        "l": [f.resource_type, f.resource_id],
        "f": [f.since, f.at_low, f.at_high],
        "c": q.count,
        "k": list(key),
        "b": backward,
    }
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


def _decode(
    resource_type: str | None, resource_id: str | None, token: str, params: tuple[tuple[str, str], ...]
) -> HistoryQuery:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["l"] != [resource_type, resource_id]:
            raise ValueError("level")
        since, at_low, at_high = (None if v is None else int(v) for v in data["f"])
        lu, rtype, rid, vid = data["k"]
        key: PageKey = (int(lu), str(rtype), str(rid), int(vid))
        count = int(data["c"])
        if not 0 < count <= MAX_COUNT:
            raise ValueError("count")
        f = VersionFilter(resource_type, resource_id, since, at_low, at_high)
        return HistoryQuery(f, count, key, bool(data["b"]), params)
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidRequest(_BAD_PAGE) from None


# ---- the Bundle ---------------------------------------------------------------------------------


async def history(db: Database, q: HistoryQuery, base: str) -> Resource:
    """The ``history`` Bundle of ``q``: one page, newest first; 404 for an unknown instance."""
    f = q.filter
    async with db.connect() as conn:
        driver = await Driver.of(conn)
        rtype, rid = f.resource_type, f.resource_id
        known = rtype is None or rid is None or await sql_history.resource_exists(driver, rtype, rid)
        if not known:
            raise ResourceNotFound(f"HAPI-2001: Resource {rtype}/{rid} is not known")
        total = None if f.since is not None or f.has_at else await sql_history.count_versions(driver, f)
        rows: list[tuple[Any, ...]] = []
        if q.count > 0:
            rows = await sql_history.version_page(driver, f, q.count + 1, after=q.after, backward=q.backward)
    more = len(rows) > q.count
    if more:
        rows = rows[1:] if q.backward else rows[: q.count]
    bundle = new_bundle("history")
    if total is not None:
        bundle["total"] = total
    bundle["link"] = _links(q, base, rows, more)
    if rows:
        bundle["entry"] = [_entry(base, row) for row in rows]
    return bundle


def _path(base: str, f: VersionFilter) -> str:
    parts = [p for p in (f.resource_type, f.resource_id) if p is not None]
    return "/".join([base, *parts, "_history"])


def _links(q: HistoryQuery, base: str, rows: list[tuple[Any, ...]], more: bool) -> list[dict[str, str]]:
    path = _path(base, q.filter)
    qs = urlencode(q.params)
    links = [{"relation": "self", "url": f"{path}?{qs}" if qs else path}]
    if not rows:
        return links
    first: PageKey = (int(rows[0][3]), rows[0][0], rows[0][1], int(rows[0][2]))
    last: PageKey = (int(rows[-1][3]), rows[-1][0], rows[-1][1], int(rows[-1][2]))
    has_next = q.backward or more
    has_previous = more if q.backward else q.after is not None
    if has_next:
        links.append({"relation": "next", "url": f"{path}?_page={_encode(q, last, False)}"})
    if has_previous:
        links.append({"relation": "previous", "url": f"{path}?_page={_encode(q, first, True)}"})
    return links


def _entry(base: str, row: tuple[Any, ...]) -> Resource:
    rtype, rid, vid, last_updated, deleted, content = row
    vid = int(vid)
    entry: Resource = {"fullUrl": f"{base}/{rtype}/{rid}"}
    if not deleted and content is not None:
        entry["resource"] = orjson.loads(content)
    method = "DELETE" if deleted else ("POST" if vid == 1 else "PUT")
    entry["request"] = {"method": method, "url": f"{rtype}/{rid}/_history/{vid}"}
    entry["response"] = {
        "status": "201 Created" if vid == 1 else "200 OK",
        "etag": f'W/"{vid}"',
        "lastModified": format_instant(int(last_updated)),
    }
    return entry
