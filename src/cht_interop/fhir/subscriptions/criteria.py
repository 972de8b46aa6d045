"""Subscription validation (HAPI's SubscriptionValidatingInterceptor: 422 rules) and criteria parsing.

Criteria are parsed by the same parser as REST search (``cht_interop.fhir.search``), so a criteria
means exactly what the same query means on ``GET /fhir/<Type>?…``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from cht_interop.fhir.errors import FhirError, Unprocessable
from cht_interop.fhir.registry import RESOURCE_TYPES
from cht_interop.fhir.search import SearchQuery, parse_match_url, parse_query

PAYLOAD_TYPES = frozenset(
    {
        "application/fhir+json",
        "application/fhir+xml",
        "application/json+fhir",
        "application/xml+fhir",
        "application/json",
        "application/xml",
    }
)


@dataclass(frozen=True, slots=True)
class Criteria:
    """A parsed criteria: the types it covers and, for ``Type?params``, the search query."""

    text: str
    resource_types: tuple[str, ...]  # ("*",) for every type
    query: SearchQuery | None


def _fail(message: str) -> Unprocessable:
    return Unprocessable(f"HAPI-0014: Can not process submitted Subscription - {message}")


@lru_cache(maxsize=4096)
def parse_criteria(text: str) -> Criteria:
    """Parse ``Type?params``, ``[*]`` or ``[A,B]``; raise Unprocessable (422) when it is not valid."""
    text = text.strip()
    if not text:
        raise _fail("Subscription.criteria must be populated")
    if text.startswith("[") and text.endswith("]"):
        names = tuple(n.strip() for n in text[1:-1].split(",") if n.strip())
        if names == ("*",):
            return Criteria(text, ("*",), None)
        bad = [n for n in names if n not in RESOURCE_TYPES]
        if not names or bad:
            raise _fail(f"Subscription.criteria contains invalid/unsupported resource type: {bad or text}")
        return Criteria(text, names, None)
    if "?" not in text:
        raise _fail(f'Subscription.criteria must be in the form "{{Resource Type}}?[params]": {text}')
    path = text.split("?", 1)[0]
    if "/" in path or not path:
        raise _fail(f'Subscription.criteria must be in the form "{{Resource Type}}?[params]": {text}')
    rtype, params = parse_match_url(text)
    if rtype not in RESOURCE_TYPES:
        raise _fail(f"Subscription.criteria contains invalid/unsupported resource type: {rtype}")
    try:
        query = parse_query(rtype, params, match_url=True)
    except FhirError as exc:
        raise Unprocessable(
            f"HAPI-0014: Invalid subscription criteria submitted: {text} {exc.diagnostics}"
        ) from None
    return Criteria(text, (rtype,), query)


def validate_subscription(resource: dict[str, Any]) -> Criteria | None:
    """HAPI's SubscriptionValidatingInterceptor rules; only ``requested``/``active`` are checked."""
    status = resource.get("status")
    if not status:
        raise _fail("Subscription.status must be populated on this server")
    if status not in ("requested", "active"):
        return None
    criteria = resource.get("criteria")
    if not isinstance(criteria, str) or not criteria.strip():
        raise _fail("Subscription.criteria must be populated")
    parsed = parse_criteria(criteria)
    channel = resource.get("channel")
    ctype = channel.get("type") if isinstance(channel, dict) else None
    if not ctype:
        raise _fail("Subscription.channel.type must be populated")
    assert isinstance(channel, dict)
    if ctype == "rest-hook":
        endpoint = channel.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise _fail("Rest-hook subscriptions must have Subscription.channel.endpoint defined")
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _fail(f"Rest-hook endpoint must be an http(s) URL: {endpoint}")
    payload = channel.get("payload")
    if payload is not None:
        mime = str(payload).split(";", 1)[0].strip()
        if mime not in PAYLOAD_TYPES:
            raise _fail(f"Invalid value for Subscription.channel.payload: {payload}")
    return parsed
