"""Which active Subscriptions a batch of writes matches, and the notification jobs for them.

Candidates come from the criteria index (one query per 500 distinct index values of the batch,
all written resource types at once) plus the "always check" set; each candidate is then verified
against its full criteria, in memory from the resource's index rows, or with one SQL query for
chained criteria (which need the referenced resources).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir.search import IndexRows, matches_in_memory, where_clauses
from cht_interop.fhir.subscriptions.criteria import parse_criteria
from cht_interop.fhir.subscriptions.delivery import notification_job
from cht_interop.fhir.tables import (
    fhir_resource,
    fhir_subscription,
    fhir_subscription_token,
    fhir_subscription_unindexed,
)

if TYPE_CHECKING:
    from cht_interop.fhir.store import Stored

_CHUNK = 500


def _lookup_values(rows: IndexRows) -> set[str]:
    values = {v for _p, _s, v in rows.tokens}
    values.update(tid for _p, _t, tid, _u in rows.refs if tid)
    values.update(url for _p, _t, _i, url in rows.refs if url)
    return values


async def match_writes(
    conn: AsyncConnection, writes: Sequence[tuple[Stored, IndexRows]], base_url: str
) -> list[NewJob]:
    """Notification jobs for every (write, active Subscription) pair that matches."""
    by_type: dict[str, list[tuple[Stored, IndexRows]]] = defaultdict(list)
    for stored, rows in writes:
        by_type[stored.resource_type].append((stored, rows))
    jobs: list[NewJob] = []
    # candidates for every written type at once: one token query per 500 values, one "always" query
    S, T, U = fhir_subscription, fhir_subscription_token, fhir_subscription_unindexed
    wanted = {
        (rtype, v) for rtype, items in by_type.items() for _s, rows in items for v in _lookup_values(rows)
    }
    subs_all: dict[str, tuple[str, str]] = {}  # sub_id -> (criteria, endpoint)
    by_type_value: dict[tuple[str, str], set[str]] = defaultdict(set)
    values = sorted({v for _t, v in wanted})
    for start in range(0, len(values), _CHUNK):
        chunk = values[start : start + _CHUNK]
        result = await conn.execute(
            select(T.c.sub_id, T.c.resource_type, T.c.value, S.c.criteria, S.c.endpoint)
            .join(S, S.c.sub_id == T.c.sub_id)
            .where(T.c.resource_type.in_(sorted(by_type)), T.c.value.in_(chunk))
        )
        for row in result:
            if (row.resource_type, row.value) in wanted:
                subs_all[row.sub_id] = (row.criteria, row.endpoint)
                by_type_value[(row.resource_type, row.value)].add(row.sub_id)
    always_by_type: dict[str, list[str]] = defaultdict(list)
    always = await conn.execute(
        select(S.c.sub_id, U.c.resource_type, S.c.criteria, S.c.endpoint)
        .join(U, U.c.sub_id == S.c.sub_id)
        .where(U.c.resource_type.in_([*sorted(by_type), "*"]))
    )
    for sub_id, sub_type, criteria_text, endpoint in always:
        subs_all[sub_id] = (criteria_text, endpoint)
        always_by_type[sub_type].append(sub_id)
    for rtype, items in by_type.items():
        always_ids = [*always_by_type.get(rtype, ()), *always_by_type.get("*", ())]
        candidates_by_value = {v: ids for (t, v), ids in by_type_value.items() if t == rtype}
        if not always_ids and not candidates_by_value:
            continue
        for stored, rows in items:
            rid: str = stored.id
            candidates = set(always_ids)
            for v in _lookup_values(rows):
                candidates.update(candidates_by_value.get(v, ()))
            for sub_id in sorted(candidates, key=lambda s: (len(s), s)):
                criteria_text, endpoint = subs_all[sub_id]
                criteria = parse_criteria(criteria_text)
                if rtype not in criteria.resource_types and "*" not in criteria.resource_types:
                    continue
                q = criteria.query
                if q is not None:
                    if q.has_chain:
                        hit = (
                            await conn.execute(
                                select(fhir_resource.c.res_id)
                                .where(*where_clauses(q, base_url), fhir_resource.c.res_id == rid)
                                .limit(1)
                            )
                        ).first() is not None
                    else:
                        hit = matches_in_memory(q, rid, stored.last_updated, rows, base_url)
                    if not hit:
                        continue
                resource = stored.resource or {"resourceType": rtype, "id": rid}
                jobs.append(notification_job({"id": sub_id, "channel": {"endpoint": endpoint}}, resource))
    return jobs
