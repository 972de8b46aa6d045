"""Credentials out of whatever is kept or shown of an HTTP exchange (OpenHIM answers, the journal).

Headers naming a credential go; in bodies, JSON keys naming a password, secret, token or
authorization have their value replaced, as do ``Name: value`` strings whose name is one (an
Endpoint's or a Subscription channel's ``header`` lines), ``password=…`` pairs in other text, and
user information in URLs.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
SECRET_WORDS = ("password", "secret", "token", "authorization", "cookie", "api-key", "apikey")
HIDDEN = "***"
_SECRET_PAIR = re.compile(r"((?:password|secret|token)[^=&\s:\"]*[=:]\s*)[^&\s\"]+", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(://)[^/@\s\"]+@")
# the same header lines inside text that is not (or no longer, once cut) JSON
_HEADER_IN_TEXT = re.compile(
    r"((?:proxy-)?(?:authorization|cookie|api-?key|x-api-key)\s*:\s*)[^\"\r\n]+", re.IGNORECASE
)
# "Authorization: Bearer …" as a string value (FHIR Endpoint.header, Subscription.channel.header)
_HEADER_LINE = re.compile(
    r"^(\s*[!-9;-~]*(?:password|secret|token|authorization|cookie|api-?key)[!-9;-~]*\s*:).*$",
    re.IGNORECASE | re.DOTALL,
)


# anything redaction could change (a name or value below, a URL with user information, or a JSON
# escape that could spell one): a body without any is kept as it is, unparsed (the common case;
# plain substring tests on the lower-cased bytes: ~10 times cheaper than one regex search)
_SECRET_MARKS = (b"password", b"secret", b"token", b"authori", b"cookie", b"apikey", b"api-key", b"\\u")


def _may_hold_secret(body: bytes) -> bool:
    low = body.lower()
    return any(mark in low for mark in _SECRET_MARKS) or (b"@" in low and b"://" in low)


def secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_HEADERS or any(w in lowered for w in SECRET_WORDS)


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers without credentials (Authorization, Cookie, anything naming a password/token)."""
    return {k: v for k, v in headers.items() if not secret_name(k)}


def _redact_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: HIDDEN if secret_name(str(k)) else _redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v) for v in value]
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(r"\1", _HEADER_LINE.sub(rf"\1 {HIDDEN}", value))
    return value


def redact_text(text: str) -> str:
    """Text that is not JSON: ``password=…`` pairs and URL credentials replaced."""
    text = _HEADER_IN_TEXT.sub(rf"\1{HIDDEN}", _SECRET_PAIR.sub(rf"\1{HIDDEN}", text))
    return _URL_CREDENTIALS.sub(r"\1", text)


def redact(body: bytes) -> str:
    """A body as a string, with passwords, tokens and URL credentials replaced."""
    text = body.decode("utf-8", errors="replace")
    if not _may_hold_secret(body):
        return text
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return redact_text(text)
    if parsed is None:
        return text
    redacted = _redact_json(parsed)
    return text if redacted == parsed else orjson.dumps(redacted).decode()


def clip(text: str, limit: int | None, *, whole: int | None = None) -> str:
    """``text`` cut to ``limit`` characters (None: whole), saying how much was left out; ``whole``:
    the length of the text that ``text`` is the start of (cut already), for that count."""
    length = len(text) if whole is None else whole
    if limit is None or length <= limit:
        return text
    return f"{text[:limit]}… [{length - limit} more characters not kept]"
