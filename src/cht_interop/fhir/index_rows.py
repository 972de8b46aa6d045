"""A resource's index rows: the values of its search parameters, as the index tables store them.

``extract`` runs on every write (the session stores its rows in ``fhir_token``, ``fhir_reference``,
``fhir_string`` and ``fhir_date``) and Subscription matching evaluates criteria against the same
rows in memory. It is separate from the search parser because it needs nothing of a query: only
the registry's parameter paths and how a reference string is split into (type, id, url).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cht_interop.fhir.registry import (
    ParamType,
    ResourceType,
    collect,
    date_ranges,
    normalise_string,
    path_steps,
    reference_of,
    string_values,
    token_values,
)

TOKEN_MAX = 255
STRING_MAX = 512
URL_MAX = 1024


@dataclass(slots=True)
class IndexRows:
    """A resource's search-parameter values, as they are stored in the index tables."""

    tokens: list[tuple[str, str | None, str]] = field(default_factory=list)  # param, system, value
    refs: list[tuple[str, str | None, str | None, str | None]] = field(
        default_factory=list
    )  # param, type, id, url
    strings: list[tuple[str, str, str]] = field(default_factory=list)  # param, value, norm
    dates: list[tuple[str, int, int]] = field(default_factory=list)  # param, low, high


def split_reference(ref: str, base_url: str | None = None) -> tuple[str | None, str | None, str | None]:
    """(type, id, external url) of a reference string as stored after resolution."""
    if base_url and ref.startswith(base_url.rstrip("/") + "/"):
        ref = ref[len(base_url.rstrip("/")) + 1 :]
    if "://" in ref or ref.startswith("urn:"):
        return None, None, ref[:URL_MAX]
    if ref.startswith("#"):
        return None, None, None
    parts = ref.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) == 2 and parts[0] and parts[1]:
        return parts[0], parts[1], None
    return None, None, None


@dataclass(frozen=True, slots=True)
class _Extractor:
    """One search parameter of one type, compiled for extraction: its paths split into steps once."""

    name: str
    type: ParamType
    paths: tuple[tuple[str, ...], ...]  # every alternative of every path
    targets: frozenset[str]


_PLANS: dict[str, tuple[ResourceType, tuple[_Extractor, ...]]] = {}


def _plan(rt: ResourceType) -> tuple[_Extractor, ...]:
    """The type's extractors, built once per type (extraction runs on every write)."""
    cached = _PLANS.get(rt.name)
    if cached is not None and cached[0] is rt:
        return cached[1]
    plan = tuple(
        _Extractor(
            p.name, p.type, tuple(s for path in p.paths for s in path_steps(path)), frozenset(p.targets)
        )
        for p in rt.params.values()
    )
    _PLANS[rt.name] = (rt, plan)
    return plan


def _values(resource: dict[str, Any], steps: tuple[str, ...]) -> list[Any]:
    """The values at ``steps`` (lists flattened); the common one-step path without recursion."""
    node = resource.get(steps[0])
    if node is None:
        return []
    if len(steps) == 1 and not isinstance(node, list):
        return [node]
    out: list[Any] = []
    collect(node, steps, 1, out)
    return out


def extract(rt: ResourceType, resource: dict[str, Any], base_url: str | None = None) -> IndexRows:
    """The resource's index rows: every search parameter of its type, in the registry's order."""
    rows = IndexRows()
    tokens, refs, strings, dates = rows.tokens, rows.refs, rows.strings, rows.dates
    for x in _plan(rt):
        name, kind = x.name, x.type
        for steps in x.paths:
            values = _values(resource, steps)
            if not values:
                continue
            if kind is ParamType.TOKEN or kind is ParamType.URI:
                for value in values:
                    if isinstance(value, str):
                        tokens.append((name, None, value[:TOKEN_MAX]))
                        continue
                    for system, code in token_values(value):
                        tokens.append((name, system and system[:TOKEN_MAX], code[:TOKEN_MAX]))
            elif kind is ParamType.REFERENCE:
                for value in values:
                    ref = reference_of(value)
                    if ref is None:
                        continue
                    ttype, tid, url = split_reference(ref, base_url)
                    if url is None and (ttype is None or (x.targets and ttype not in x.targets)):
                        continue
                    refs.append((name, ttype, tid, url))
            elif kind is ParamType.STRING:
                for value in values:
                    for text in string_values(value):
                        strings.append((name, text[:STRING_MAX], normalise_string(text)[:STRING_MAX]))
            elif kind is ParamType.DATE:
                for value in values:
                    for low, high in date_ranges(value):
                        dates.append((name, low, high))
    return rows
