"""The one registry of resource types: their search parameters, how each is extracted, and the
required-binding codes we check. Routes, search, validation and the CapabilityStatement all read it.

Paths are FHIRPath-ish: dotted element names, lists flattened at every step; ``a|b`` lists
alternatives (choice types such as ``effectiveDateTime|effectivePeriod``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

from cht_interop.fhir.datetimes import MAX_US, MIN_US, parse_range


class ParamType(StrEnum):
    TOKEN = "token"
    REFERENCE = "reference"
    STRING = "string"
    DATE = "date"
    URI = "uri"  # indexed and searched like a token without system


@dataclass(frozen=True, slots=True)
class SearchParam:
    name: str
    type: ParamType
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()  # reference target types; empty = any type
    description: str = ""


@dataclass(frozen=True, slots=True)
class ResourceType:
    name: str
    params: dict[str, SearchParam]
    # element path → allowed codes (required bindings HAPI's parser enforces)
    codes: dict[str, frozenset[str]] = field(default_factory=dict)


def _p(
    name: str, type_: ParamType, *paths: str, targets: tuple[str, ...] = (), description: str = ""
) -> SearchParam:
    return SearchParam(name, type_, paths, targets, description)


T, R, S, D, U = ParamType.TOKEN, ParamType.REFERENCE, ParamType.STRING, ParamType.DATE, ParamType.URI
_REQUEST_PRIORITY = frozenset({"routine", "urgent", "asap", "stat"})
_ADMIN_GENDER = frozenset({"male", "female", "other", "unknown"})
_NAME_PARAMS = (
    _p("name", S, "name", description="A portion of the name"),
    _p("family", S, "name.family"),
    _p("given", S, "name.given"),
    _p("telecom", T, "telecom"),
    _p("active", T, "active"),
    _p("gender", T, "gender"),
)


def _type(
    name: str, params: tuple[SearchParam, ...], codes: dict[str, frozenset[str]] | None = None
) -> ResourceType:
    base = (_p("identifier", T, "identifier", description="A business identifier"),)
    all_params = {p.name: p for p in (*base, *params)}
    return ResourceType(name, all_params, codes or {})


RESOURCE_TYPES: dict[str, ResourceType] = {
    rt.name: rt
    for rt in (
        _type(
            "Patient",
            (
                *_NAME_PARAMS,
                _p("birthdate", D, "birthDate"),
                _p("organization", R, "managingOrganization", targets=("Organization",)),
                _p(
                    "general-practitioner", R, "generalPractitioner", targets=("Practitioner", "Organization")
                ),
            ),
            {"gender": _ADMIN_GENDER},
        ),
        _type("Practitioner", _NAME_PARAMS, {"gender": _ADMIN_GENDER}),
        _type(
            "Organization",
            (
                _p("name", S, "name", "alias"),
                _p("active", T, "active"),
                _p("type", T, "type"),
                _p("endpoint", R, "endpoint", targets=("Endpoint",)),
                _p("partof", R, "partOf", targets=("Organization",)),
            ),
        ),
        _type(
            "Endpoint",
            (
                _p("name", S, "name"),
                _p("status", T, "status"),
                _p("connection-type", T, "connectionType"),
                _p("payload-type", T, "payloadType"),
                _p("organization", R, "managingOrganization", targets=("Organization",)),
            ),
            {"status": frozenset({"active", "suspended", "error", "off", "entered-in-error", "test"})},
        ),
        _type(
            "ServiceRequest",
            (
                _p("status", T, "status"),
                _p("intent", T, "intent"),
                _p("priority", T, "priority"),
                _p("code", T, "code"),
                _p("category", T, "category"),
                _p("subject", R, "subject"),
                _p("patient", R, "subject", targets=("Patient",)),
                _p("encounter", R, "encounter", targets=("Encounter",)),
                _p("requester", R, "requester"),
                _p("performer", R, "performer"),
                _p("based-on", R, "basedOn"),
                _p("replaces", R, "replaces", targets=("ServiceRequest",)),
                _p("requisition", T, "requisition"),
                _p("authored", D, "authoredOn"),
                _p("occurrence", D, "occurrenceDateTime|occurrencePeriod"),
            ),
            {
                "status": frozenset(
                    {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
                ),
                "intent": frozenset(
                    {
                        "proposal",
                        "plan",
                        "directive",
                        "order",
                        "original-order",
                        "reflex-order",
                        "filler-order",
                        "instance-order",
                        "option",
                    }
                ),
                "priority": _REQUEST_PRIORITY,
            },
        ),
        _type(
            "Task",
            (
                _p("status", T, "status"),
                _p("business-status", T, "businessStatus"),
                _p("intent", T, "intent"),
                _p("priority", T, "priority"),
                _p("code", T, "code"),
                _p("based-on", R, "basedOn"),
                _p("part-of", R, "partOf", targets=("Task",)),
                _p("focus", R, "focus"),
                _p("subject", R, "for"),
                _p("for", R, "for"),
                _p("patient", R, "for", targets=("Patient",)),
                _p("encounter", R, "encounter", targets=("Encounter",)),
                _p("owner", R, "owner"),
                _p("requester", R, "requester"),
                _p("authored-on", D, "authoredOn"),
                _p("modified", D, "lastModified"),
                _p("period", D, "executionPeriod"),
            ),
            {
                "status": frozenset(
                    {
                        "draft",
                        "requested",
                        "received",
                        "accepted",
                        "rejected",
                        "ready",
                        "cancelled",
                        "in-progress",
                        "on-hold",
                        "failed",
                        "completed",
                        "entered-in-error",
                    }
                ),
                "intent": frozenset(
                    {
                        "unknown",
                        "proposal",
                        "plan",
                        "order",
                        "original-order",
                        "reflex-order",
                        "filler-order",
                        "instance-order",
                        "option",
                    }
                ),
                "priority": _REQUEST_PRIORITY,
            },
        ),
        _type(
            "Encounter",
            (
                _p("status", T, "status"),
                _p("class", T, "class"),
                _p("type", T, "type"),
                _p("reason-code", T, "reasonCode"),
                _p("subject", R, "subject"),
                _p("patient", R, "subject", targets=("Patient",)),
                _p("participant", R, "participant.individual"),
                _p("practitioner", R, "participant.individual", targets=("Practitioner",)),
                _p("service-provider", R, "serviceProvider", targets=("Organization",)),
                _p("based-on", R, "basedOn", targets=("ServiceRequest",)),
                _p("part-of", R, "partOf", targets=("Encounter",)),
                _p("date", D, "period"),
            ),
            {
                "status": frozenset(
                    {
                        "planned",
                        "arrived",
                        "triaged",
                        "in-progress",
                        "onleave",
                        "finished",
                        "cancelled",
                        "entered-in-error",
                        "unknown",
                    }
                )
            },
        ),
        _type(
            "Observation",
            (
                _p("status", T, "status"),
                _p("code", T, "code"),
                _p("category", T, "category"),
                _p("value-concept", T, "valueCodeableConcept"),
                _p("subject", R, "subject"),
                _p("patient", R, "subject", targets=("Patient",)),
                _p("encounter", R, "encounter", targets=("Encounter",)),
                _p("based-on", R, "basedOn"),
                _p("focus", R, "focus"),
                _p("performer", R, "performer"),
                _p("date", D, "effectiveDateTime|effectivePeriod|effectiveInstant"),
            ),
            {
                "status": frozenset(
                    {
                        "registered",
                        "preliminary",
                        "final",
                        "amended",
                        "corrected",
                        "cancelled",
                        "entered-in-error",
                        "unknown",
                    }
                )
            },
        ),
        _type(
            "Subscription",
            (
                _p("status", T, "status"),
                _p("criteria", S, "criteria"),
                _p("type", T, "channel.type"),
                _p("url", U, "channel.endpoint"),
                _p("payload", T, "channel.payload"),
                _p("contact", T, "contact"),
            ),
            {
                "status": frozenset({"requested", "active", "error", "off"}),
                "channel.type": frozenset({"rest-hook", "websocket", "email", "sms", "message"}),
            },
        ),
    )
}

# parameters every type has; handled on the resource table, not the index tables
COMMON_PARAMS: dict[str, str] = {
    "_id": "token",
    "_lastUpdated": "date",
}


def get_type(name: str) -> ResourceType | None:
    return RESOURCE_TYPES.get(name)


# --- extraction ---------------------------------------------------------------------------------


def walk(node: Any, path: str) -> Iterator[Any]:
    """Every value at ``path`` under ``node`` (lists flattened at each step)."""
    out: list[Any] = []
    for steps in path_steps(path):
        collect(node, steps, 0, out)
    return iter(out)


@lru_cache(maxsize=4096)
def path_steps(path: str) -> tuple[tuple[str, ...], ...]:
    """``a.b|c`` → ``(("a", "b"), ("c",))``, split once per path (extraction runs per resource)."""
    return tuple(tuple(alt.split(".")) for alt in path.split("|"))


def collect(node: Any, steps: tuple[str, ...], i: int, out: list[Any]) -> None:
    """Append the values at ``steps[i:]`` under ``node`` to ``out`` (plain recursion, no generators)."""
    if isinstance(node, list):
        for item in node:
            collect(item, steps, i, out)
        return
    if i == len(steps):
        if node is not None:
            out.append(node)
        return
    if isinstance(node, dict):
        child = node.get(steps[i])
        if child is not None:
            collect(child, steps, i + 1, out)


def normalise_string(value: str) -> str:
    """Case- and accent-folded text, as string search compares it by default."""
    if value.isascii():  # NFKD leaves ASCII as it is and there is nothing to strip
        return value.casefold()
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def token_values(value: Any) -> Iterator[tuple[str | None, str]]:
    """(system, code) pairs of a code, boolean, Identifier, ContactPoint, Coding or CodeableConcept."""
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str | int | float):
        yield None, str(value)
    elif isinstance(value, dict):
        codings = value.get("coding")
        if isinstance(codings, list):
            for coding in codings:
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    yield _sys(coding.get("system")), coding["code"]
        elif isinstance(value.get("code"), str):
            yield _sys(value.get("system")), value["code"]
        elif isinstance(value.get("value"), str):
            yield _sys(value.get("system")), value["value"]


def _sys(system: Any) -> str | None:
    return system if isinstance(system, str) and system else None


_STRING_PARTS = (
    "text",
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
)


def string_values(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for part in _STRING_PARTS:
            yield from (v for v in walk(value, part) if isinstance(v, str))


def date_ranges(value: Any) -> Iterator[tuple[int, int]]:
    if isinstance(value, str):
        rng = parse_range(value)
        if rng:
            yield rng
    elif isinstance(value, dict) and ("start" in value or "end" in value):
        start = parse_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = parse_range(value["end"]) if isinstance(value.get("end"), str) else None
        yield (start[0] if start else MIN_US), (end[1] if end else MAX_US)


def reference_of(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return str(value["reference"])
    return None


def iter_references(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Reference object (a dict with a string ``reference``) in a resource, with its path."""
    return iter(references(node, path))


def references(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """:func:`iter_references` as a list (kept by a caller that walks the same references twice)."""
    out: list[tuple[str, dict[str, Any]]] = []
    _references(node, path, out)
    return out


def _references(node: Any, path: str, out: list[tuple[str, dict[str, Any]]]) -> None:
    # collected into a list by plain recursion: nested generators cost a frame switch per level
    if isinstance(node, dict):
        for key, child in node.items():
            if key == "contained":
                continue
            if key == "reference" and isinstance(child, str):
                out.append((path, node))
            elif isinstance(child, dict | list):
                _references(child, f"{path}.{key}" if path else key, out)
    elif isinstance(node, list):
        for item in node:
            _references(item, path, out)
