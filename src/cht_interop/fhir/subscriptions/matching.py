"""Which active Subscriptions a batch of writes matches, and the notification jobs for them.

Candidates come from the criteria index (one query per 500 distinct index values of the batch,
all written resource types at once, the first with the "always check" set in it); each candidate
is then verified against its full criteria, in memory from the resource's index rows, or with one
SQL query for chained criteria (which need the referenced resources; ``sql.resource_matches``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence

from cht_interop.db.driver import Driver, markers
from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir import sql
from cht_interop.fhir.index_rows import IndexRows
from cht_interop.fhir.outcomes import Stored
from cht_interop.fhir.search_memory import matches_in_memory
from cht_interop.fhir.subscriptions.criteria import parse_criteria
from cht_interop.fhir.subscriptions.delivery import notification_job
from cht_interop.kit.fair import off_loop

_CHUNK = 500


def candidate_queries(types: list[str], values: list[str]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Driver SQL for the candidate Subscriptions of a batch of writes: (sub_id, type, value,
    criteria, endpoint) from the criteria index, per 500 values; the first statement also has the
    "always check" set (value NULL) UNION ALLed in, so a small transaction needs one round trip."""
    type_markers = markers(len(types))
    always = (
        "SELECT s.sub_id, u.resource_type, NULL, s.criteria, s.endpoint FROM fhir_subscription s "
        "JOIN fhir_subscription_unindexed u ON u.sub_id = s.sub_id "
        f"WHERE u.resource_type IN ({markers(len(types) + 1)})"
    )
    always_params = (*types, "*")
    for start in range(0, max(len(values), 1), _CHUNK):
        chunk = tuple(values[start : start + _CHUNK])
        parts: list[str] = []
        params: tuple[str, ...] = ()
        if chunk:
            parts.append(
                "SELECT t.sub_id, t.resource_type, t.value, s.criteria, s.endpoint "
                "FROM fhir_subscription_token t "
                f"JOIN fhir_subscription s ON s.sub_id = t.sub_id WHERE t.resource_type IN ({type_markers}) "
                f"AND t.value IN ({markers(len(chunk))})"
            )
            params = (*types, *chunk)
        if start == 0:
            parts.append(always)
            params = (*params, *always_params)
        yield " UNION ALL ".join(parts), params


def _lookup_values(rows: IndexRows) -> set[str]:
    values = {v for _p, _s, v in rows.tokens}
    values.update(tid for _p, _t, tid, _u in rows.refs if tid)
    values.update(url for _p, _t, _i, url in rows.refs if url)
    return values


async def match_writes(
    writes: Sequence[tuple[Stored, IndexRows]],
    base_url: str,
    driver: Driver,
    *,
    owed: Collection[str] = (),
) -> list[NewJob]:
    """Notification jobs for every (write, active Subscription) pair that matches. ``owed``: ids
    of Subscriptions the same transaction switches off; their notifications are marked owed."""
    by_type: dict[str, list[tuple[Stored, IndexRows]]] = defaultdict(list)
    for stored, rows in writes:
        by_type[stored.resource_type].append((stored, rows))
    jobs: list[NewJob] = []
    # every written value a criterion could name (~0.5 s for 100,000 writes): off the event loop
    wanted = await off_loop(
        lambda: {(t, v) for t, items in by_type.items() for _s, rows in items for v in _lookup_values(rows)},
        items=len(writes),
    )
    subs_all: dict[str, tuple[str, str]] = {}  # sub_id -> (criteria, endpoint)
    by_type_value: dict[tuple[str, str], set[str]] = defaultdict(set)
    always_by_type: dict[str, list[str]] = defaultdict(list)
    for statement, params in candidate_queries(sorted(by_type), sorted({v for _t, v in wanted})):
        for sub_id, sub_type, value, criteria_text, endpoint in await driver.fetchall(statement, params):
            if value is None:  # from the "always check" set
                subs_all[sub_id] = (criteria_text, endpoint)
                always_by_type[sub_type].append(sub_id)
            elif (sub_type, value) in wanted:
                subs_all[sub_id] = (criteria_text, endpoint)
                by_type_value[(sub_type, value)].add(sub_id)
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
                        hit = await sql.resource_matches(driver, q, base_url, rid)
                    else:
                        hit = matches_in_memory(q, rid, stored.last_updated, rows, base_url)
                    if not hit:
                        continue
                resource = stored.resource or {"resourceType": rtype, "id": rid}
                sub = {"id": sub_id, "channel": {"endpoint": endpoint}}
                jobs.append(notification_job(sub, resource, owed=sub_id in owed))
    return jobs
