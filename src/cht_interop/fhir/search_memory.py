"""Search evaluated in memory: does one resource, given its index rows, satisfy a parsed query?

Subscription matching asks this for every write and every candidate Subscription, without a
database round trip; it must agree with ``search_sql`` clause for clause (chained clauses need
the referenced resources, so matching sends those to SQL instead).
"""

from __future__ import annotations

from cht_interop.fhir.index_rows import TOKEN_MAX, IndexRows
from cht_interop.fhir.registry import ParamType, normalise_string
from cht_interop.fhir.search import Clause, SearchQuery, date_value, reference_target, token_value


def matches_in_memory(
    q: SearchQuery, resource_id: str, last_updated: int, rows: IndexRows, base_url: str | None = None
) -> bool:
    """Whether a resource with these index rows satisfies ``q`` (chains are not evaluable here)."""
    return all(_clause_matches(c, resource_id, last_updated, rows, base_url) for c in q.clauses)


def _clause_matches(c: Clause, rid: str, lu: int, rows: IndexRows, base_url: str | None) -> bool:
    if c.name == "_id":
        return rid in c.values
    if c.name == "_lastUpdated":
        return any(_date_hit(lu, lu + 1, v) for v in c.values)
    p = c.param
    assert p is not None
    if p.type in (ParamType.TOKEN, ParamType.URI):
        mine_t = [(s, v) for n, s, v in rows.tokens if n == p.name]
        present, hit = bool(mine_t), any(_token_hit(s, v, x) for s, v in mine_t for x in c.values)
    elif p.type is ParamType.REFERENCE:
        mine_r = [(t, i, u) for n, t, i, u in rows.refs if n == p.name]
        present = bool(mine_r)
        hit = any(_ref_hit(c, t, i, u, x, base_url) for t, i, u in mine_r for x in c.values)
    elif p.type is ParamType.STRING:
        mine_s = [(v, nrm) for n, v, nrm in rows.strings if n == p.name]
        present, hit = (
            bool(mine_s),
            any(_string_hit(c.modifier, v, nrm, x) for v, nrm in mine_s for x in c.values),
        )
    else:
        mine_d = [(lo, hi) for n, lo, hi in rows.dates if n == p.name]
        present, hit = bool(mine_d), any(_date_hit(lo, hi, x) for lo, hi in mine_d for x in c.values)
    if c.modifier == "missing":
        return present != (c.values == ("true",))
    if c.modifier == "not":
        return not hit
    return hit


def _token_hit(system: str | None, value: str, query: str) -> bool:
    has_system, qs, qc = token_value(query)
    if qc is not None and value != qc[:TOKEN_MAX]:
        return False
    return not has_system or system == qs


def _ref_hit(
    c: Clause, ttype: str | None, tid: str | None, url: str | None, query: str, base: str | None
) -> bool:
    qt, qi, qu = reference_target(c, query, base)
    if qu is not None:
        return url == qu
    return tid == qi and (qt is None or ttype == qt)


def _string_hit(modifier: str | None, value: str, norm: str, query: str) -> bool:
    if modifier == "exact":
        return value == query
    q = normalise_string(query)
    return q in norm if modifier == "contains" else norm.startswith(q)


def _date_hit(low: int, high: int, query: str) -> bool:
    prefix, lo, hi = date_value(query)
    return {
        "eq": low >= lo and high <= hi,
        "ne": not (low >= lo and high <= hi),
        "gt": high > hi,
        "lt": low < lo,
        "ge": high > lo,
        "le": low < hi,
        "sa": low >= hi,
        "eb": high <= lo,
    }.get(prefix, low < hi and high > lo)
