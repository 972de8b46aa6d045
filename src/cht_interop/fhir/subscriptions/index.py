"""The index of active Subscriptions: criteria tokens → subscription, so matching cost is flat.

For each active Subscription we store one row (criteria, endpoint) and, when its criteria has a
plain token or reference parameter, one token row per OR value of the first such parameter. A
write looks up only the rows whose value is one of its own index values; Subscriptions without an
indexable parameter form the small "always check" set of their resource type.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from cht_interop.db.driver import Driver, InsertBatch, markers
from cht_interop.fhir.index_rows import TOKEN_MAX, URL_MAX, split_reference
from cht_interop.fhir.registry import ParamType
from cht_interop.fhir.search import Clause, SearchQuery
from cht_interop.fhir.subscriptions.criteria import Criteria, parse_criteria

_CHUNK = 500
_SUB_COLUMNS = ("sub_id", "resource_type", "criteria", "endpoint", "indexed")
_TOKEN_COLUMNS = ("resource_type", "param", "system", "value", "sub_id")


def index_tokens(query: SearchQuery) -> list[tuple[str, str | None, str]] | None:
    """(param, system, value) rows for the first indexable clause, or None (always check)."""
    for clause in query.clauses:
        rows = _clause_tokens(clause)
        if rows is not None:
            return rows
    return None


def _clause_tokens(clause: Clause) -> list[tuple[str, str | None, str]] | None:
    p = clause.param
    if p is None or clause.chain or clause.modifier in ("missing", "not"):
        return None
    out: list[tuple[str, str | None, str]] = []
    if p.type in (ParamType.TOKEN, ParamType.URI):
        for v in clause.values:
            system, sep, code = v.partition("|")
            if not sep:
                system, code = "", v
            if not code:
                return None  # "system|" matches any code: not indexable by value
            out.append((p.name, system or None, code[:TOKEN_MAX]))
        return out
    if p.type is ParamType.REFERENCE:
        for v in clause.values:
            _t, tid, url = split_reference(v)
            out.append((p.name, None, (url or tid or v)[:URL_MAX]))
        return out
    return None


def is_indexed(resource: dict[str, Any]) -> bool:
    """Whether this Subscription version matches writes: only ``active`` rest-hook ones do."""
    return resource.get("status") == "active" and (resource.get("channel") or {}).get("type") == "rest-hook"


async def update(
    driver: Driver,
    ops: Sequence[tuple[str, dict[str, Any] | None, Criteria | None]],
    *,
    fresh: AbstractSet[str] = frozenset(),
) -> list[InsertBatch]:
    """Make the index follow Subscription writes (the last version of each wins; None = deleted):
    delete their old rows, return the new ones for the caller to insert with its own rows.

    Only ``active`` rest-hook Subscriptions are indexed; ``ops`` carry the criteria the write
    already parsed. ``fresh`` ids were created in this transaction: no index rows to remove yet.
    """
    latest: dict[str, tuple[dict[str, Any] | None, Criteria | None]] = {}
    for sub_id, resource, parsed in ops:
        latest[sub_id] = (resource, parsed)
    ids = [sub_id for sub_id in latest if sub_id not in fresh]
    for start in range(0, len(ids), _CHUNK):
        chunk = tuple(ids[start : start + _CHUNK])
        for table in ("fhir_subscription_token", "fhir_subscription", "fhir_subscription_unindexed"):
            await driver.execute(f"DELETE FROM {table} WHERE sub_id IN ({markers(len(chunk))})", chunk)
    subs: list[tuple[Any, ...]] = []
    tokens: list[tuple[Any, ...]] = []
    unindexed: list[tuple[Any, ...]] = []
    for sub_id, (resource, parsed) in latest.items():
        if resource is None or not is_indexed(resource):
            continue
        channel = resource.get("channel") or {}
        criteria = parsed or parse_criteria(str(resource.get("criteria", "")))
        rows = index_tokens(criteria.query) if criteria.query is not None else None
        rtype = criteria.resource_types[0] if len(criteria.resource_types) == 1 else "*"
        indexed = rows is not None and rtype != "*"
        subs.append((sub_id, rtype, criteria.text, str(channel.get("endpoint", "")), indexed))
        if not indexed:
            unindexed.append((rtype, sub_id))
        elif rows:
            tokens += [(rtype, param, system, value, sub_id) for param, system, value in rows]
    return [
        ("fhir_subscription", _SUB_COLUMNS, subs),
        ("fhir_subscription_token", _TOKEN_COLUMNS, tokens),
        ("fhir_subscription_unindexed", ("resource_type", "sub_id"), unindexed),
    ]
