"""The index of active Subscriptions: criteria tokens → subscription, so matching cost is flat.

For each active Subscription we store one row (criteria, endpoint) and, when its criteria has a
plain token or reference parameter, one token row per OR value of the first such parameter. A
write looks up only the rows whose value is one of its own index values; Subscriptions without an
indexable parameter form the small "always check" set of their resource type.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.fhir.registry import ParamType
from cht_interop.fhir.search import TOKEN_MAX, URL_MAX, Clause, SearchQuery, split_reference
from cht_interop.fhir.subscriptions.criteria import Criteria, parse_criteria
from cht_interop.fhir.tables import fhir_subscription, fhir_subscription_token, fhir_subscription_unindexed

_CHUNK = 500


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


async def apply(
    conn: AsyncConnection,
    ops: list[tuple[str, dict[str, Any] | None]],
    *,
    fresh: AbstractSet[str] = frozenset(),
) -> None:
    """Make the index follow Subscription writes (the last version of each wins; None = deleted).

    Only ``active`` rest-hook Subscriptions are indexed; everything is written with executemany.
    ``fresh`` ids were created in this transaction, so they have no index rows to remove yet.
    """
    latest: dict[str, dict[str, Any] | None] = {}
    for sub_id, resource in ops:
        latest[sub_id] = resource
    ids = [sub_id for sub_id in latest if sub_id not in fresh]
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        await conn.execute(delete(fhir_subscription_token).where(fhir_subscription_token.c.sub_id.in_(chunk)))
        await conn.execute(delete(fhir_subscription).where(fhir_subscription.c.sub_id.in_(chunk)))
        await conn.execute(
            delete(fhir_subscription_unindexed).where(fhir_subscription_unindexed.c.sub_id.in_(chunk))
        )
    subs: list[dict[str, Any]] = []
    tokens: list[dict[str, Any]] = []
    unindexed: list[dict[str, Any]] = []
    for sub_id, resource in latest.items():
        if resource is None or resource.get("status") != "active":
            continue
        channel = resource.get("channel") or {}
        if channel.get("type") != "rest-hook":
            continue
        criteria: Criteria = parse_criteria(str(resource.get("criteria", "")))
        rows = index_tokens(criteria.query) if criteria.query is not None else None
        rtype = criteria.resource_types[0] if len(criteria.resource_types) == 1 else "*"
        indexed = rows is not None and rtype != "*"
        subs.append(
            {
                "sub_id": sub_id,
                "resource_type": rtype,
                "criteria": criteria.text,
                "endpoint": str(channel.get("endpoint", "")),
                "indexed": indexed,
            }
        )
        if not indexed:
            unindexed.append({"resource_type": rtype, "sub_id": sub_id})
        elif rows:
            tokens += [
                {"resource_type": rtype, "param": param, "system": system, "value": value, "sub_id": sub_id}
                for param, system, value in rows
            ]
    if subs:
        await conn.execute(insert(fhir_subscription), subs)
    if tokens:
        await conn.execute(insert(fhir_subscription_token), tokens)
    if unindexed:
        await conn.execute(insert(fhir_subscription_unindexed), unindexed)
