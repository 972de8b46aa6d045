"""Conditional read: whether a read or vread may answer 304 Not Modified.

HAPI (``ReadMethodBinding``, for read and vread alike) answers 304 when ``If-None-Match`` names
the version it would return (``W/"3"``, ``"3"``, ``3``: ``ParameterUtil.parseETagValue``) or when
the resource was not modified after ``If-Modified-Since``. We follow HTTP (RFC 9110 §13.1.2,
§13.1.3) where HAPI is narrower: ``If-None-Match`` may list several tags or be ``*``, and when it
is present ``If-Modified-Since`` is ignored; dates compare at whole seconds (an HTTP date has no
fraction, so a client sending back our ``Last-Modified`` gets its 304). A malformed
``If-Modified-Since`` is ignored, as HTTP says.
"""

from __future__ import annotations

from datetime import UTC
from email.utils import parsedate_to_datetime

from cht_interop.fhir.datetimes import to_us


def etag_version(value: str) -> str:
    """The version an entity tag names: ``W/"3"``, ``"3"`` or ``3`` → ``3``."""
    raw = value.strip()
    if raw.startswith("W/"):
        raw = raw[2:]
    if len(raw) > 1 and raw[0] == raw[-1] == '"':
        raw = raw[1:-1]
    return raw


def not_modified(
    if_none_match: str | None, if_modified_since: str | None, version_id: int, last_updated_us: int
) -> bool:
    """Whether the version (``version_id``, updated at ``last_updated_us``) satisfies the request's
    preconditions for a 304."""
    if if_none_match is not None and if_none_match.strip():
        tags = [etag_version(t) for t in if_none_match.split(",") if t.strip()]
        return "*" in tags or str(version_id) in tags
    if if_modified_since is None or not if_modified_since.strip():
        return False
    try:
        since = parsedate_to_datetime(if_modified_since.strip())
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return last_updated_us // 1_000_000 <= to_us(since) // 1_000_000
