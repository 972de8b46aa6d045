"""Errors as the CHT API raises them; ``app.py`` renders them with the CHT's envelope.

ApiError (status, message, details): rendered by ``server-utils`` rules
├── status 401       → "not logged in" handling (JSON 401, 302 to login, or Basic prompt)
├── status 4xx       → ``{"code", "error": message, "details"}`` (or text)
└── status ≥ 500     → always "Server error", with ``details`` only for public messages
CouchError: CouchDB-shaped ``{"error", "reason"}`` for ``/medic/*`` paths (see ``store.StoreError``).
"""

from __future__ import annotations

from typing import Any

from cht_interop.sandbox.store import StoreError


class ApiError(Exception):
    """A CHT API error: ``message`` may be a string or an object (``/api/v2/users`` uses objects)."""

    def __init__(self, status: int, message: str | dict[str, Any], details: Any = None) -> None:
        super().__init__(message if isinstance(message, str) else message.get("message", ""))
        self.status = status
        self.message = message
        self.details = details


def public_error(message: str) -> ApiError:
    """cht-core's ``PublicError``: no code, so a 500 "Server error" carrying the message as details."""
    return ApiError(500, "Server error", message)


def bad_request(message: str | dict[str, Any]) -> ApiError:
    return ApiError(400, message)


def forbidden(message: str = "Insufficient privileges") -> ApiError:
    return ApiError(403, message)


def not_logged_in() -> ApiError:
    return ApiError(401, "unauthorized")


CouchError = StoreError
