"""The statements of the history interaction, on the version table (``fhir_version``): the
versions of one resource, one type or the whole server, newest first, a page at a time.

Beside ``sql`` (which owns every other statement on the FHIR tables) because history is its own
read path with its own indexes (``ix_fhir_version_updated``, ``ix_fhir_version_type_updated``,
migration ``fhir_0004``; an instance's history uses the primary key).

Paging is by key, not by offset: a page ends at a version's (last_updated, res_type, res_id,
version_id) and the next one starts strictly below it, so versions written while a client pages
(always newer) never shift a page, and no version is shown twice or skipped. The type level
compares (last_updated, res_id, version_id) after its ``res_type = ?``, as its index has them; one
resource's versions are ordered by their number (the same order: its writes are serialised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cht_interop.db.driver import Driver

# a history's order (newest first) and page key, per level: the columns of the index that serves
# it, in that index's order, so that PostgreSQL and SQLite both seek to a page's start
_SYSTEM_KEY = ("v.last_updated", "v.res_type", "v.res_id", "v.version_id")
_TYPE_KEY = ("v.last_updated", "v.res_id", "v.version_id")  # after ``res_type = ?``
_INSTANCE_KEY = ("v.version_id",)  # one resource's writes are serialised: numbers follow time
_COLUMNS = "v.res_type, v.res_id, v.version_id, v.last_updated, v.deleted, v.content"

PageKey = tuple[int, str, str, int]  # (last_updated µs, res_type, res_id, version_id)


@dataclass(frozen=True, slots=True)
class VersionFilter:
    """Which versions a history shows. ``resource_type`` / ``resource_id`` None: every type / id.
    ``since``: updated at or after (µs). ``at_low`` / ``at_high`` (inclusive, µs): versions that
    were current at some moment of that period (either bound may be open)."""

    resource_type: str | None = None
    resource_id: str | None = None
    since: int | None = None
    at_low: int | None = None
    at_high: int | None = None

    @property
    def has_at(self) -> bool:
        return self.at_low is not None or self.at_high is not None


def _where(f: VersionFilter) -> tuple[list[str], list[Any]]:
    conds: list[str] = []
    params: list[Any] = []
    if f.resource_type is not None:
        conds.append("v.res_type = ?")
        params.append(f.resource_type)
    if f.resource_id is not None:
        conds.append("v.res_id = ?")
        params.append(f.resource_id)
    # one resource's versions are few: "+ 0" keeps its primary key in use, not a last_updated index
    updated = "v.last_updated + 0" if f.resource_id is not None else "v.last_updated"
    if f.since is not None:
        conds.append(f"{updated} >= ?")
        params.append(f.since)
    if f.at_high is not None:  # it had become current by the end of the period
        conds.append(f"{updated} <= ?")
        params.append(f.at_high)
    if f.at_low is not None:  # and its successor, if any, came after the period began
        conds.append(
            "NOT EXISTS (SELECT 1 FROM fhir_version n WHERE n.res_type = v.res_type "
            "AND n.res_id = v.res_id AND n.version_id = v.version_id + 1 AND n.last_updated <= ?)"
        )
        params.append(f.at_low)
    return conds, params


async def count_versions(driver: Driver, f: VersionFilter) -> int:
    """How many versions the history of ``f`` has."""
    conds, params = _where(f)
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    rows = await driver.fetchall(f"SELECT count(*) FROM fhir_version v{where}", tuple(params))
    return int(rows[0][0])


async def version_page(
    driver: Driver, f: VersionFilter, limit: int, *, after: PageKey | None = None, backward: bool = False
) -> list[tuple[Any, ...]]:
    """(res_type, res_id, version_id, last_updated, deleted, content) of up to ``limit`` versions,
    newest first: those older than ``after`` (or, ``backward``, the ones just newer than it)."""
    conds, params = _where(f)
    cols: tuple[str, ...] = _SYSTEM_KEY
    if f.resource_id is not None:
        cols = _INSTANCE_KEY
    elif f.resource_type is not None:
        cols = _TYPE_KEY
    if after is not None:
        by_column = dict(zip(_SYSTEM_KEY, after, strict=True))
        marks = ", ".join("?" * len(cols))
        conds.append(f"({', '.join(cols)}) {'>' if backward else '<'} ({marks})")
        params += [by_column[c] for c in cols]
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    order = ", ".join(c if backward else f"{c} DESC" for c in cols)
    sql = f"SELECT {_COLUMNS} FROM fhir_version v{where} ORDER BY {order} LIMIT ?"
    rows = await driver.fetchall(sql, (*params, limit))
    return rows[::-1] if backward else rows


async def resource_exists(driver: Driver, rtype: str, rid: str) -> bool:
    """Whether ``rtype/rid`` has ever been stored (deleted or not)."""
    rows = await driver.fetchall(
        "SELECT 1 FROM fhir_resource WHERE res_type = ? AND res_id = ?", (rtype, rid)
    )
    return bool(rows)
