"""``_summary`` and ``_elements``: the subsets of a resource a search or read may return.

Which elements are "summary" and which are mandatory comes from the R4B models of ``fhir.resources``
(``summary_element_property`` is the spec's ``isSummary``; a required field or ``element_required``
is a minimum cardinality of 1), so the table follows the spec for every registered type. As HAPI
does (``ca.uhn.fhir.rest.api.SummaryEnum``, applied by the parser's ``setSummaryMode``/
``setSuppressNarratives``), every subsetted resource carries the ``SUBSETTED`` tag of
``http://terminology.hl7.org/CodeSystem/v3-ObservationValue``.

- ``true``: id, meta, the summary elements and the mandatory ones;
- ``text``: id, meta, ``text`` and the mandatory elements;
- ``data``: everything but ``text``;
- ``count``: no resources at all (the search answers its total only, see ``reads``);
- ``false``: the whole resource.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import lru_cache
from typing import Any

from cht_interop.fhir.errors import InvalidRequest

SUMMARY_MODES = ("true", "false", "count", "data", "text")
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_ALWAYS = frozenset({"resourceType", "id", "meta"})


def summary_mode(value: str) -> str:
    """A valid ``_summary`` value, or a 400 naming the bad one (HAPI's message)."""
    if value not in SUMMARY_MODES:
        raise InvalidRequest(f"HAPI-1901: Invalid _summary value: {value}")
    return value


@lru_cache(maxsize=64)
def _elements(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(summary elements, mandatory elements) of a type: JSON names, with the ``_x`` primitive
    extension siblings of each."""
    from fhir.resources.R4B import get_fhir_model_class

    summary: set[str] = set()
    mandatory: set[str] = set()
    for name, field in get_fhir_model_class(resource_type).model_fields.items():
        if name.endswith("__ext"):
            continue
        key = field.alias or name
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("summary_element_property"):
            summary |= {key, f"_{key}"}
        if field.is_required() or extra.get("element_required"):
            mandatory |= {key, f"_{key}"}
    return frozenset(summary), frozenset(mandatory)


def tagged(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` with the SUBSETTED tag added to its ``meta`` (a new meta; the input is not changed)."""
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t != SUBSETTED]
    meta["tag"] = [*tags, SUBSETTED]
    resource["meta"] = meta
    return resource


def keep_only(resource: dict[str, Any], keep: Collection[str]) -> dict[str, Any]:
    """A copy of ``resource`` with only the ``keep`` elements (and resourceType, id, meta), tagged."""
    return tagged({k: v for k, v in resource.items() if k in _ALWAYS or k in keep})


def summarize(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    """The ``_summary=mode`` view of ``resource`` (a copy when subsetted; the same object for false)."""
    if mode in ("false", "count"):
        return resource
    summary, mandatory = _elements(resource.get("resourceType", ""))
    if mode == "true":
        return keep_only(resource, summary | mandatory)
    if mode == "text":
        return keep_only(resource, mandatory | {"text"})
    return tagged({k: v for k, v in resource.items() if k != "text"})  # data


def elements_subset(resource: dict[str, Any], elements: Sequence[str]) -> dict[str, Any]:
    """``_elements``: the named top-level elements (and resourceType, id, meta), tagged SUBSETTED."""
    return keep_only(resource, elements)
