"""The one client for a CHT instance (cht-core API), used by every part that talks to the CHT.

What a real CHT expects of a client (cht-core 5.2 api server-utils.js, records.js) and how it answers:

- Basic auth in the ``Authorization`` header (never in the URL); ``Accept: application/json`` so
  errors come back as the JSON envelope ``{"code", "error", "details"}`` (and 401 as JSON, not a
  302 to the login page); ``Content-Type`` exactly ``application/json``; TLS verification on.
- Every server-side failure is rendered as **500 "Server error"**, with a ``details`` string only
  for the errors the CHT chose to expose. So whether a 500 is worth retrying is told by its body:

    ChtError                    (status, details; never carries credentials)
    ├── ChtTransientError       network errors, 429, 502/503/504, any 500 without a known
    │                           permanent detail, a 2xx body that is not the CHT's JSON
    └── ChtPermanentError       400/401/403/404/413 (and other 4xx), 3xx (a login redirect), 500 with
                                ``Form not found`` / ``Missing _meta`` / ``Missing required field``,
                                a JSON 2xx whose ``success`` is not ``true``
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson

from cht_interop.cht.pacing import OVERLOAD_STATUSES, ChtPacer, retry_after_seconds

JSON = "application/json"

# ``details`` of the CHT's records errors that no retry can fix (cht-core ``api/src/services/records.js``).
PERMANENT_500_DETAILS = (
    "Form not found",
    "Missing _meta",
    "Missing required field",
    "Missing required value",
)


#: ``CHT_MAX_CONCURRENT_REQUESTS``'s default (settings.py): calls open at once at one CHT
DEFAULT_MAX_CONCURRENT_REQUESTS = 16

_TRANSIENT_STATUSES = frozenset(
    {
        HTTPStatus.REQUEST_TIMEOUT,
        HTTPStatus.TOO_MANY_REQUESTS,
        HTTPStatus.BAD_GATEWAY,
        HTTPStatus.SERVICE_UNAVAILABLE,
        HTTPStatus.GATEWAY_TIMEOUT,
    }
)


class ChtError(Exception):
    """A CHT call that did not do what was asked. ``status`` is None for network errors."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        details: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details
        self.retry_after = retry_after  # seconds the CHT asked us to wait (its Retry-After)


class ChtTransientError(ChtError):
    """The CHT may accept the same call later: retry with backoff."""


class ChtPermanentError(ChtError):
    """The CHT will not accept this call as it is: do not retry."""


def _basic_auth(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _error_details(response: httpx.Response) -> tuple[str | None, str]:
    """The CHT's ``details`` (JSON envelope) or the text body, and a short printable summary."""
    details: str | None = None
    error: str | None = None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        raw_details = body.get("details")
        details = raw_details if isinstance(raw_details, str) else None
        raw_error = body.get("error")
        error = raw_error if isinstance(raw_error, str) else None
    text = details or error or response.text[:200].strip()
    return details, text


def classify_response(response: httpx.Response) -> ChtError:
    """The typed error for a CHT response that is not a success (see the module docstring)."""
    status = response.status_code
    details, summary = _error_details(response)
    message = f"CHT answered {status}" + (f": {summary}" if summary else "")
    if HTTPStatus.MULTIPLE_CHOICES <= status < HTTPStatus.BAD_REQUEST:
        # Without JSON accept the CHT redirects unauthenticated callers to its login page.
        return ChtPermanentError(
            f"CHT answered {status} (a redirect, likely to its login page: check the credentials)",
            status=status,
        )
    if status in _TRANSIENT_STATUSES:
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        return ChtTransientError(message, status=status, details=details, retry_after=retry_after)
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        # JSON envelope puts it in ``details``; the text form appends it to the message.
        haystack = details if details is not None else response.text
        if any(marker in haystack for marker in PERMANENT_500_DETAILS):
            return ChtPermanentError(message, status=status, details=details)
        return ChtTransientError(message, status=status, details=details)
    if HTTPStatus.BAD_REQUEST <= status < HTTPStatus.INTERNAL_SERVER_ERROR:
        return ChtPermanentError(message, status=status, details=details)
    return ChtTransientError(message, status=status, details=details)


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """A record the CHT holds: its ``_id``, and whether this call stored it (False: it was there)."""

    record_id: str
    created: bool


class ChtClient:
    """One CHT instance: base URL, the API user, and the process's shared ``httpx.AsyncClient``.

    The HTTP client is owned by the caller (the app lifespan); this class never closes it. Every
    call goes through ``pacer`` (``pacing.py``): a bounded window of concurrent calls that narrows
    when the CHT answers 429/503.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        http: httpx.AsyncClient,
        *,
        pacer: ChtPacer | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the CHT URL must be an absolute http(s) URL")
        if parts.username or parts.password:
            # Credentials in a URL end up in logs and proxies; the CHT takes them in a header.
            raise ValueError("put the CHT credentials in CHT_USERNAME/CHT_PASSWORD, not in the CHT URL")
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._authorization = _basic_auth(username, password)
        self.http = http
        self.pacer = pacer or ChtPacer(DEFAULT_MAX_CONCURRENT_REQUESTS)

    def __repr__(self) -> str:
        return f"ChtClient({self.base_url!r}, user={self.username!r})"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one authenticated call; network failures become ``ChtTransientError``.

        The response is returned whatever its status: callers decide what success means; an
        overload answer (429/503) narrows the pacer's window for every call.
        """
        headers = {"Accept": JSON, "Authorization": self._authorization}
        if json is not None:
            content = orjson.dumps(json)
            content_type = content_type or JSON
        if content_type is not None:
            headers["Content-Type"] = content_type
        async with self.pacer.slot() as ticket:
            try:
                response = await self.http.request(
                    method,
                    self.url(path),
                    content=content,
                    headers=headers,
                    params=params,
                    follow_redirects=False,
                )
            except httpx.TransportError as exc:
                raise ChtTransientError(f"CHT unreachable: {type(exc).__name__}: {exc}") from exc
            if response.status_code in OVERLOAD_STATUSES:
                self.pacer.refused(ticket, retry_after_seconds(response.headers.get("retry-after")))
            else:
                self.pacer.succeeded()
            return response

    async def write_record(self, doc: Mapping[str, Any]) -> RecordWrite:
        """``PUT /medic/<_id>`` of a new record (see ``records.py``): written once, whatever the retries.

        CouchDB answers 201 (or 202) when it stored the doc and 409 when a doc with that ``_id`` is
        there already: that is a resend of a write whose answer was lost, so the stored record is
        read back and taken as the result (``created`` False). A 409 over a doc that is not such a
        record (another form) is permanent: the id is taken by something else.
        """
        doc_id = str(doc["_id"])
        path = f"/medic/{quote(doc_id, safe=':')}"
        response = await self.request("PUT", path, json=dict(doc))
        if response.status_code == HTTPStatus.CONFLICT:
            existing = await self.get_doc(doc_id)
            if existing is None:
                # deleted between the two calls (the PUT would now succeed): try again later
                raise ChtTransientError(f"CHT doc {doc_id} conflicted and then was gone", status=409)
            if existing.get("type") != doc.get("type") or existing.get("form") != doc.get("form"):
                raise ChtPermanentError(
                    f"CHT doc {doc_id} exists and is not a {doc.get('form')} record", status=409
                )
            return RecordWrite(doc_id, created=False)
        data = self._json_ok(response)
        if not isinstance(data, dict) or data.get("ok") is not True or data.get("id") != doc_id:
            raise ChtPermanentError(
                f"CHT did not store {doc_id}: {str(data)[:200]}", status=response.status_code
            )
        return RecordWrite(doc_id, created=True)

    # -- admin calls (settings, docs, credentials), used by ``cht configure`` -------------------------

    def _json_ok(self, response: httpx.Response) -> Any:
        if not HTTPStatus.OK <= response.status_code < HTTPStatus.MULTIPLE_CHOICES:
            raise classify_response(response)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ChtTransientError(
                f"CHT answered {response.status_code} without a JSON body (not the CHT API?)",
                status=response.status_code,
            ) from None

    async def get_settings(self) -> dict[str, Any]:
        """``GET /api/v1/settings``: the app settings as the CHT holds them."""
        data = self._json_ok(await self.request("GET", "/api/v1/settings"))
        if not isinstance(data, dict):
            raise ChtPermanentError("CHT settings are not a JSON object")
        return data

    async def replace_settings(self, settings: Mapping[str, Any]) -> bool:
        """``PUT /api/v1/settings?replace=1`` (as cht-conf uploads them); whether anything changed.

        The CHT answers 200 even when it did not save (``success`` false), so that is checked.
        """
        response = await self.request("PUT", "/api/v1/settings", json=dict(settings), params={"replace": "1"})
        data = self._json_ok(response)
        if not isinstance(data, dict) or data.get("success") is not True:
            raise ChtPermanentError(
                f"CHT did not save the settings: {str(data)[:200]}", status=response.status_code
            )
        return bool(data.get("updated", True))

    async def get_doc(self, doc_id: str) -> dict[str, Any] | None:
        """``GET /medic/<id>``; None when the CHT has no such doc."""
        response = await self.request("GET", f"/medic/{quote(doc_id, safe=':')}")
        if response.status_code == HTTPStatus.NOT_FOUND:
            return None
        data = self._json_ok(response)
        if not isinstance(data, dict):
            raise ChtPermanentError(f"CHT doc {doc_id} is not a JSON object")
        return data

    async def put_doc(self, doc: Mapping[str, Any]) -> str:
        """``PUT /medic/<_id>`` (inline ``_attachments`` allowed); the new ``_rev``."""
        doc_id = doc["_id"]
        data = self._json_ok(await self.request("PUT", f"/medic/{quote(doc_id, safe=':')}", json=dict(doc)))
        rev = data.get("rev") if isinstance(data, dict) else None
        if not isinstance(rev, str):
            raise ChtPermanentError(f"CHT did not store {doc_id}: {str(data)[:200]}")
        return rev

    async def put_credential(self, key: str, secret: str) -> None:
        """``PUT /api/v1/credentials/<key>`` (text/plain): a secret outbound push reads by key."""
        response = await self.request(
            "PUT",
            f"/api/v1/credentials/{quote(key, safe='')}",
            content=secret.encode(),
            content_type="text/plain",
        )
        self._json_ok(response)
