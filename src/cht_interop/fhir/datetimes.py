"""FHIR date/dateTime/instant values as half-open ranges of microseconds (UTC).

A value means the whole span of its precision: ``2024`` is the year, ``2024-03-01`` the day,
``2024-03-01T10:00:00.5Z`` the tenth of a second. Search and indexing compare these ranges.

>>> r = parse_range("2024-03-01")
>>> format_instant(r[0]), (r[1] - r[0]) // 1_000_000
('2024-03-01T00:00:00.000+00:00', 86400)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache

_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_US = -(2**62)
MAX_US = 2**62


def to_us(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def now_us() -> int:
    return to_us(datetime.now(UTC))


def format_instant(us: int) -> str:
    """The FHIR instant for ``us`` with millisecond precision, as HAPI writes meta.lastUpdated."""
    return _format_ms(us // 1000)


@lru_cache(maxsize=1024)
def _format_ms(ms: int) -> str:
    # cached: a Bundle's resources are written a few µs apart, so most share their millisecond
    dt = from_us(ms * 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+00:00"


@lru_cache(maxsize=4096)
def parse_range(text: str) -> tuple[int, int] | None:
    """The [low, high) µs range a FHIR date/dateTime/instant denotes, or None if malformed.
    Cached: a batch of writes tends to carry the same few dates (authoredOn, lastModified)."""
    m = _RE.match(text.strip())
    if not m:
        return None
    try:
        year = int(m["y"])
        if m["m"] is None:
            low = datetime(year, 1, 1, tzinfo=UTC)
            return to_us(low), to_us(datetime(year + 1, 1, 1, tzinfo=UTC))
        month = int(m["m"])
        if m["d"] is None:
            low = datetime(year, month, 1, tzinfo=UTC)
            high = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
            return to_us(low), to_us(high)
        day = int(m["d"])
        if m["H"] is None:
            low = datetime(year, month, day, tzinfo=UTC)
            return to_us(low), to_us(low + timedelta(days=1))
        tz: timezone = UTC
        if m["tz"] and m["tz"] != "Z":
            sign = 1 if m["tz"][0] == "+" else -1
            hours, minutes = int(m["tz"][1:3]), int(m["tz"][4:6])
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        seconds = int(m["S"] or 0)
        frac = m["f"] or ""
        micro = int((frac + "000000")[:6])
        low = datetime(year, month, day, int(m["H"]), int(m["M"]), seconds, micro, tzinfo=tz)
        if m["S"] is None:
            span = 60_000_000
        elif not frac:
            span = 1_000_000
        else:
            span = max(1, 10 ** (6 - min(len(frac), 6)))
        return to_us(low), to_us(low) + span
    except ValueError:  # e.g. month 13, day 32
        return None
