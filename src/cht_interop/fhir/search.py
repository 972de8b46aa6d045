"""FHIR search, the parse entry point: a query string or match URL → a :class:`SearchQuery` of
:class:`Clause` objects, and the opaque paging tokens that carry a query from page to page.

One parser serves REST search, match URLs (conditional create/update/delete, inline references)
and Subscription criteria, so they can never disagree on what a query means. What is done with a
parsed query lives beside it, one module each: ``search_sql`` compiles it to SQL over the index
tables, ``search_memory`` evaluates it against one resource's index rows (Subscription matching),
and ``index_rows`` extracts those rows from a resource.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson

from cht_interop.fhir.datetimes import parse_range
from cht_interop.fhir.errors import InvalidRequest
from cht_interop.fhir.index_rows import split_reference
from cht_interop.fhir.registry import RESOURCE_TYPES, ParamType, ResourceType, SearchParam
from cht_interop.fhir.summary import summary_mode

DEFAULT_COUNT = 20
MAX_COUNT = 1000
# result parameters we act on; others starting with "_" are formatting hints we accept and ignore
RESULT_PARAMS = {
    "_count",
    "_sort",
    "_summary",
    "_total",
    "_page",
    "_offset",
    "_include",
    "_revinclude",
    "_elements",
}
IGNORED_PARAMS = {"_format", "_pretty"}
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_MODIFIERS = {
    ParamType.TOKEN: {"missing", "not"},
    ParamType.URI: {"missing", "not"},
    ParamType.STRING: {"missing", "exact", "contains"},
    ParamType.DATE: {"missing"},
    ParamType.REFERENCE: {"missing"},
}


# --- parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Clause:
    """One ``name[:modifier][.chain]=v1,v2`` parameter: its values are ORed; clauses are ANDed."""

    name: str
    param: SearchParam | None  # None for _id and _lastUpdated
    modifier: str | None
    values: tuple[str, ...]
    chain: str | None = None  # chained parameter name on the referenced type
    chain_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SearchQuery:
    resource_type: str
    clauses: tuple[Clause, ...]
    params: tuple[tuple[str, str], ...]  # the original (filter and result) params, for links
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: tuple[tuple[str, bool], ...] = ()  # (name, descending)
    summary: str = "false"  # _summary: true | false | count | data | text (see ``summary``)
    total: str | None = None  # _total: none | estimated | accurate (None: not given)
    # (source type, reference parameter, target type or None): _include and _revinclude
    includes: tuple[tuple[str, str, str | None], ...] = ()
    revincludes: tuple[tuple[str, str, str | None], ...] = ()
    elements: tuple[str, ...] = ()  # _elements: top-level elements to return (matches only)

    @property
    def summary_count(self) -> bool:
        return self.summary == "count"

    @property
    def has_chain(self) -> bool:
        return any(c.chain for c in self.clauses)


def split_values(raw: str) -> tuple[str, ...]:
    """Split on commas not escaped with a backslash, then unescape."""
    if "\\" not in raw:
        return tuple(raw.split(","))  # nothing escaped (nearly always): no character walk
    out: list[str] = []
    cur = ""
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            cur += raw[i + 1]
            i += 2
            continue
        if ch == ",":
            out.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    out.append(cur)
    return tuple(out)


def parse_query_string(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def parse_match_url(url: str) -> tuple[str, list[tuple[str, str]]]:
    """``Patient?identifier=x`` (or HAPI's tolerated ``Patient/?…``) → (type, params)."""
    path, sep, query = url.partition("?")
    path = path.rstrip("/")
    if "/" in path:
        path = path.rsplit("/", 1)[-1]
    return path, parse_query_string(query) if sep else []


def _unknown(rt: ResourceType, name: str) -> InvalidRequest:
    valid = ", ".join(sorted([*rt.params, "_id", "_lastUpdated"]))
    return InvalidRequest(
        f'HAPI-0524: Unknown search parameter "{name}" for resource type "{rt.name}". '
        f"Valid search parameters for this search are: [{valid}]"
    )


def parse_query(
    resource_type: str,
    params: Iterable[tuple[str, str]],
    *,
    match_url: bool = False,
) -> SearchQuery:
    """Parse search parameters; unknown ones are a 400 (in match URLs, ``_x`` ones are ignored)."""
    rt = RESOURCE_TYPES.get(resource_type)
    if rt is None:
        raise InvalidRequest(f"HAPI-0302: Unknown resource type '{resource_type}'")
    params = list(params)
    if any(k == "_page" for k, _ in params):
        params = decode_cursor(resource_type, params)
    clauses: list[Clause] = []
    count, offset, sort, summary, total = DEFAULT_COUNT, 0, [], "false", None
    includes: list[tuple[str, str, str | None]] = []
    revincludes: list[tuple[str, str, str | None]] = []
    elements: list[str] = []
    for raw_name, raw_value in params:
        if raw_name in IGNORED_PARAMS:
            continue
        if raw_name == "_count":
            count = _int(raw_name, raw_value, 0, MAX_COUNT)
            continue
        if raw_name == "_offset":
            offset = _int(raw_name, raw_value, 0, 10**9)
            continue
        if raw_name == "_sort":
            for part in raw_value.split(","):
                part = part.strip()
                desc = part.startswith("-")
                name = part.lstrip("-")
                if name not in ("_id", "_lastUpdated") and name not in rt.params:
                    raise _unknown(rt, name)
                sort.append((name, desc))
            continue
        if raw_name == "_summary":
            summary = summary_mode(raw_value)
            continue
        if raw_name == "_elements":
            elements += [e.strip() for e in raw_value.split(",") if e.strip()]
            continue
        if raw_name in ("_include", "_revinclude"):
            spec = _include_spec(raw_name, raw_value)
            if raw_name == "_include" and spec[0] != rt.name:
                raise InvalidRequest(
                    f"Invalid _include parameter value: {raw_value!r} (source must be {rt.name})"
                )
            (includes if raw_name == "_include" else revincludes).append(spec)
            continue
        if raw_name == "_total":
            total = total_mode(raw_value)
            continue
        clause = parse_clause(rt, raw_name, raw_value, match_url=match_url)
        if clause is not None:
            clauses.append(clause)
    return SearchQuery(
        resource_type,
        tuple(clauses),
        tuple((k, v) for k, v in params if k not in ("_page", "_offset")),
        count=count,
        offset=offset,
        sort=tuple(sort),
        summary=summary,
        total=total,
        includes=tuple(includes),
        revincludes=tuple(revincludes),
        elements=tuple(elements),
    )


def total_mode(value: str) -> str:
    """A valid ``_total`` (the spec's and HAPI's ``SearchTotalModeEnum``: none, estimated, accurate;
    ``estimate``, which this server accepted before, is read as ``estimated``), or a 400."""
    if value == "estimate":
        return "estimated"
    if value not in ("none", "estimated", "accurate"):
        raise InvalidRequest(f"Invalid _total value: {value} (expected none, estimated or accurate)")
    return value


def _include_spec(name: str, value: str) -> tuple[str, str, str | None]:
    """``Source:param[:Target]`` of an _include/_revinclude (``*`` is not supported)."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or parts[0] not in RESOURCE_TYPES:
        raise InvalidRequest(f"HAPI-2015: Invalid {name} parameter value: {value!r}")
    p = RESOURCE_TYPES[parts[0]].params.get(parts[1])
    if p is None or p.type is not ParamType.REFERENCE:
        raise InvalidRequest(
            f"HAPI-2015: Invalid {name} parameter value: {value!r} (not a reference parameter)"
        )
    target = parts[2] if len(parts) == 3 else None
    if target is not None and target not in RESOURCE_TYPES:
        raise InvalidRequest(f"HAPI-2015: Invalid {name} parameter value: {value!r} (unknown target type)")
    return parts[0], parts[1], target


def _int(name: str, value: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"Invalid {name} value: {value!r} (an integer is required)") from None
    if n < low:
        raise InvalidRequest(f"Invalid {name} value: {value!r}")
    return min(n, high)


def parse_clause(rt: ResourceType, raw_name: str, raw_value: str, *, match_url: bool) -> Clause | None:
    """One ``name[:modifier][.chain]=values`` parameter of type ``rt`` (None: ignored in a match
    URL); ``search_sql`` parses a chained clause again on each candidate target type."""
    head, _, chain = raw_name.partition(".")
    name, _, modifier = head.partition(":")
    if name in ("_id", "_lastUpdated"):
        if modifier or chain:
            raise InvalidRequest(f"Modifiers and chains are not supported on {name}")
        values = split_values(raw_value)
        if name == "_lastUpdated":
            for v in values:
                date_value(v)
        return Clause(name, None, None, values)
    param = rt.params.get(name)
    if param is None:
        if match_url and name.startswith("_"):
            return None  # HAPI ignores unknown _x parameters in match URLs
        if match_url:
            raise InvalidRequest(
                f"HAPI-0488: Failed to parse match URL[{rt.name}?{raw_name}={raw_value}] - Resource type "
                f"{rt.name} does not have a parameter with name: {name}"
            )
        raise _unknown(rt, name)
    values = split_values(raw_value)
    mod: str | None = modifier or None
    chain_types: tuple[str, ...] = ()
    if mod is not None and mod not in _MODIFIERS[param.type]:
        if param.type is ParamType.REFERENCE and mod in RESOURCE_TYPES:
            if param.targets and mod not in param.targets:
                raise InvalidRequest(f"Invalid target type {mod} for search parameter {rt.name}:{name}")
        else:
            raise InvalidRequest(f"Unsupported modifier :{mod} on search parameter {rt.name}:{name}")
    if mod == "missing" and values not in (("true",), ("false",)):
        raise InvalidRequest(f"Invalid :missing value {raw_value!r} (true or false)")
    if chain:
        if param.type is not ParamType.REFERENCE:
            raise InvalidRequest(
                f"Search parameter {rt.name}:{name} is not a reference; it cannot be chained"
            )
        if "." in chain:
            raise InvalidRequest("Only one level of chaining is supported")
        if mod is not None and mod in RESOURCE_TYPES:
            candidates: tuple[str, ...] = (mod,)
        else:
            candidates = param.targets or tuple(RESOURCE_TYPES)
        chain_name = chain.partition(":")[0]
        chain_types = tuple(
            t for t in candidates if chain_name in RESOURCE_TYPES[t].params or chain_name == "_id"
        )
        if not chain_types:
            raise InvalidRequest(f'HAPI-1214: Invalid chained parameter "{chain}" on {rt.name}:{name}')
        # validate the chained clause once against the first type
        parse_clause(RESOURCE_TYPES[chain_types[0]], chain, raw_value, match_url=match_url)
    if param.type is ParamType.DATE and mod != "missing":
        for v in values:
            date_value(v)
    return Clause(name, param, mod, values, chain or None, chain_types)


def date_value(value: str) -> tuple[str, int, int]:
    """(prefix, low, high) of a date search value (``ge2024-01``): the range it covers, in µs."""
    prefix = "eq"
    if value[:2] in _PREFIXES:
        prefix, value = value[:2], value[2:]
    rng = parse_range(value)
    if rng is None:
        raise InvalidRequest(f'HAPI-1882: Invalid date/time format: "{value}"')
    return prefix, rng[0], rng[1]


def token_value(value: str) -> tuple[bool, str | None, str | None]:
    """(system given?, system or None for 'no system', code or None for 'any code')."""
    if "|" in value:
        system, _, code = value.partition("|")
        return True, system or None, code or None
    return False, None, value


def reference_target(
    clause: Clause, value: str, base_url: str | None
) -> tuple[str | None, str | None, str | None]:
    """(type, id, url) a reference search value designates; a bare id takes its type from a
    ``:Type`` modifier or from the parameter's only target type."""
    ttype, tid, url = split_reference(value, base_url)
    if ttype is None and url is None:  # a bare id
        tid = value
        if clause.modifier and clause.modifier in RESOURCE_TYPES:
            ttype = clause.modifier
        elif clause.param is not None and len(clause.param.targets) == 1:
            ttype = clause.param.targets[0]
    return ttype, tid, url


# --- paging cursors -----------------------------------------------------------------------------


def encode_cursor(q: SearchQuery, offset: int) -> str:
    """An opaque, stateless page token: the query itself and where the page starts."""
    params = [[k, v] for k, v in q.params if k != "_count"]
    raw = orjson.dumps({"t": q.resource_type, "p": params, "o": offset, "c": q.count})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(resource_type: str, params: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    token = next(v for k, v in params if k == "_page")
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["t"] != resource_type:
            raise ValueError("type")
        out = [(str(k), str(v)) for k, v in data["p"]]
        out += [("_count", str(int(data["c"]))), ("_offset", str(int(data["o"])))]
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidRequest("Invalid or expired paging token (_page)") from None
    return out
