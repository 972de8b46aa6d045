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

Records go many to a ``POST /medic/_bulk_docs`` (``write_record``): a failed request is every
record's error as above; a per-doc error in its answer is that record's alone, permanent when no
retry fixes it (``_PERMANENT_DOC_ERRORS``), transient otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import orjson

from cht_interop.cht.pacing import OVERLOAD_STATUSES, ChtPacer, SlotBatches, retry_after_seconds
from cht_interop.kit import exchanges
from cht_interop.kit.pooled_http import CallFailed, PooledHttp

JSON = "application/json"
BULK_DOCS = "/medic/_bulk_docs"
ALL_DOCS = "/medic/_all_docs"
# the record calls, at volume: over the pooled session when the client has one
_RECORD_PATHS = frozenset({BULK_DOCS, ALL_DOCS})

# ``details`` of the CHT's records errors that no retry can fix (cht-core ``api/src/services/records.js``).
PERMANENT_500_DETAILS = (
    "Form not found",
    "Missing _meta",
    "Missing required field",
    "Missing required value",
)


#: ``CHT_MAX_CONCURRENT_REQUESTS``'s default (settings.py): calls open at once at one CHT
DEFAULT_MAX_CONCURRENT_REQUESTS = 16
#: ``CHT_WRITE_BATCH_SIZE``'s default (settings.py): records one ``_bulk_docs`` request carries at most
DEFAULT_WRITE_BATCH_SIZE = 100
#: the most of a record call's answer read over the pooled path (``_all_docs`` of a full batch is
#: ~100 docs of a few kB); a longer one is cut, fails to parse, and the records retry
MAX_RECORD_ANSWER_BYTES = 32 * 1024 * 1024

# CouchDB's per-doc errors in a ``_bulk_docs`` answer that no retry fixes, as the HTTP status a
# single write would have had (``chttpd_db.erl`` ``update_doc_result_to_json``, ``couch_db``'s
# validation); any other per-doc error (a shard that did not answer…) is transient.
_PERMANENT_DOC_ERRORS = {
    "forbidden": HTTPStatus.FORBIDDEN,
    "unauthorized": HTTPStatus.UNAUTHORIZED,
    "bad_request": HTTPStatus.BAD_REQUEST,
    "illegal_docid": HTTPStatus.BAD_REQUEST,
    "doc_validation": HTTPStatus.BAD_REQUEST,
    "document_too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    "too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
}

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


@dataclass(frozen=True, slots=True)
class _DocAnswer:
    """One record's part of a ``_bulk_docs`` call: what came of it, and what the CHT said of it."""

    outcome: RecordWrite | ChtError
    status: int  # the call's HTTP status
    answer: Any  # the CHT's result for this doc


class ChtClient:
    """One CHT instance: base URL, the API user, and the process's shared ``httpx.AsyncClient``.

    The HTTP clients are owned by the caller (the app lifespan); this class never closes them. Every
    call goes through ``pacer`` (``pacing.py``): a bounded window of concurrent calls that narrows
    when the CHT answers 429/503. Records written at the same time share a ``_bulk_docs`` request.
    Given ``pooled`` (the process's aiohttp session, ``kit/pooled_http.py``), the record calls
    (``_bulk_docs``, ``_all_docs``) go over it: httpx cost ~8% of a worker's CPU sending a list's
    records, aiohttp a tenth of that per call. The admin calls stay on ``http``.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        http: httpx.AsyncClient,
        *,
        pacer: ChtPacer | None = None,
        write_batch_size: int = DEFAULT_WRITE_BATCH_SIZE,
        pooled: PooledHttp | None = None,
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
        self.pooled = pooled
        self.pacer = pacer or ChtPacer(DEFAULT_MAX_CONCURRENT_REQUESTS)
        # each record's part of a ``_bulk_docs`` call is recorded with this (immutable) URL: parsed
        # once, not once per record (1.5% of a worker's CPU sending a 10,000-entry list's records)
        self._bulk_docs_url = httpx.URL(self.url(BULK_DOCS))
        # concurrent record writes of this process: one ``_bulk_docs`` request per pacer slot
        self.record_writes: SlotBatches[Mapping[str, Any], _DocAnswer] = SlotBatches(
            self.pacer, self._write_batch, write_batch_size
        )

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
        async with self.pacer.slot() as ticket:
            return await self._send(
                ticket, method, path, json=json, content=content, content_type=content_type, params=params
            )

    async def _send(
        self,
        ticket: int,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One call in a pacer slot already held (``ticket``): what ``request`` does inside it."""
        headers = {"Accept": JSON, "Authorization": self._authorization}
        if json is not None:
            content = orjson.dumps(json)
            content_type = content_type or JSON
        if content_type is not None:
            headers["Content-Type"] = content_type
        if self.pooled is not None and path in _RECORD_PATHS:
            response = await self._send_pooled(method, path, headers, content or b"", params)
        else:
            response = await self._send_httpx(method, path, headers, content, params)
        if response.status_code in OVERLOAD_STATUSES:
            self.pacer.refused(ticket, retry_after_seconds(response.headers.get("retry-after")))
        else:
            self.pacer.succeeded()
        return response

    async def _send_httpx(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        content: bytes | None,
        params: Mapping[str, str] | None,
    ) -> httpx.Response:
        try:
            return await self.http.request(
                method,
                self.url(path),
                content=content,
                headers=headers,
                params=params,
                follow_redirects=False,
            )
        except httpx.TransportError as exc:
            raise ChtTransientError(f"CHT unreachable: {type(exc).__name__}: {exc}") from exc

    async def _send_pooled(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        content: bytes,
        params: Mapping[str, str] | None,
    ) -> httpx.Response:
        """The call over ``pooled``, its answer as an ``httpx.Response`` (what the callers read)."""
        assert self.pooled is not None
        url = self.url(path) + (f"?{urlencode(params)}" if params else "")
        try:
            reply = await self.pooled.request(
                method, url, list(headers.items()), content, max_body=MAX_RECORD_ANSWER_BYTES
            )
        except CallFailed as exc:  # named as httpx names it: the same message either way
            raise ChtTransientError(f"CHT unreachable: {exc}") from exc
        answer_headers = [("Content-Type", reply.content_type)]
        if reply.retry_after is not None:
            answer_headers.append(("Retry-After", reply.retry_after))
        return httpx.Response(reply.status, headers=answer_headers, content=reply.body)

    async def write_record(self, doc: Mapping[str, Any]) -> RecordWrite:
        """Store a new record (see ``records.py``) once, whatever the retries.

        Written with the records other submissions write at the same time, in one
        ``POST /medic/_bulk_docs`` (``_write_batch``); this call's own doc's result is returned.
        A recording caller (the job journal) gets its record's part of that call: its doc and
        the CHT's answer for it, not the other records'.
        """
        sent_at = exchanges.now_iso()
        try:
            part = await self.record_writes(doc)
        except ChtError as exc:
            self._record_part(doc, sent_at, exc.status, {"error": exc.message})
            raise
        self._record_part(doc, sent_at, part.status, [part.answer])
        if isinstance(part.outcome, ChtError):
            raise part.outcome
        return part.outcome

    def _record_part(self, doc: Mapping[str, Any], sent_at: str, status: int | None, answer: Any) -> None:
        recording = exchanges.current()
        if recording is None:
            return
        headers = {"Accept": JSON, "Content-Type": JSON}
        body = orjson.dumps({"docs": [doc]})
        part = exchanges.Exchange("POST", self._bulk_docs_url, headers, body, sent_at)
        if status is not None:
            part.status, part.answered_at = status, exchanges.now_iso()
            part.response_body = orjson.dumps(answer)
        recording.exchanges.append(part)

    async def _write_batch(self, docs: list[Mapping[str, Any]], ticket: int) -> list[_DocAnswer]:
        """``POST /medic/_bulk_docs`` of new records: one result per doc, in order.

        CouchDB answers 201 (202: stored, short of its write quorum) with a result per doc,
        ``{"ok": true, "id", "rev"}`` or ``{"id", "error", "reason"}``; the request is not atomic.
        ``conflict`` means a doc with that ``_id`` is there already: a resend of a write whose
        answer was lost, so the stored docs are read back (one ``_all_docs`` call for all of them)
        and a record of the same type and form is taken as the result (``created`` False); a
        conflict over any other doc is permanent. Another per-doc error is that record's own
        failure; a failed request (429/503, 5xx, network) fails every record of it. The calls are
        kept out of the sender's recording: each caller records its own record's part.
        """
        unrecorded = contextvars.copy_context()
        unrecorded.run(exchanges.start)
        body = {"docs": docs}
        response = await asyncio.create_task(
            self._send(ticket, "POST", BULK_DOCS, json=body), context=unrecorded
        )
        answers = self._json_ok(response)
        if not isinstance(answers, list) or len(answers) != len(docs):
            raise ChtPermanentError(
                f"CHT did not answer each record of a _bulk_docs request: {str(answers)[:200]}",
                status=response.status_code,
            )
        outcomes: list[RecordWrite | ChtError] = []
        conflicted: dict[str, int] = {}  # doc id -> its index in ``outcomes``
        for doc, answer in zip(docs, answers, strict=True):
            doc_id = str(doc["_id"])
            if not isinstance(answer, dict) or answer.get("id") != doc_id:
                outcomes.append(ChtPermanentError(f"CHT did not store {doc_id}: {str(answer)[:200]}"))
            elif "error" not in answer and (answer.get("ok") is True or isinstance(answer.get("rev"), str)):
                outcomes.append(RecordWrite(doc_id, created=True))
            elif answer.get("error") == "conflict":
                conflicted[doc_id] = len(outcomes)
                outcomes.append(ChtTransientError(f"CHT doc {doc_id} conflicted", status=409))
            else:
                outcomes.append(_doc_error(doc_id, answer))
        if conflicted:
            existing: Mapping[str, dict[str, Any] | ChtError | None]
            try:
                existing = await asyncio.create_task(
                    self._read_docs(ticket, list(conflicted)), context=unrecorded
                )
            except ChtError as exc:  # the stored docs could not be read: those records retry
                existing = dict.fromkeys(conflicted, exc)
            for doc_id, index in conflicted.items():
                outcomes[index] = _already_there(docs[index], existing.get(doc_id))
        status = response.status_code
        return [_DocAnswer(o, status, a) for o, a in zip(outcomes, answers, strict=True)]

    async def _read_docs(self, ticket: int, doc_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        """``POST /medic/_all_docs?include_docs=true`` for ``doc_ids``: each live doc, None if
        missing or deleted."""
        response = await self._send(
            ticket, "POST", ALL_DOCS, json={"keys": doc_ids}, params={"include_docs": "true"}
        )
        data = self._json_ok(response)
        rows = data.get("rows") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise ChtTransientError(f"CHT _all_docs answer without rows: {str(data)[:200]}")
        found: dict[str, dict[str, Any] | None] = {}
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("key"), str):
                doc = row.get("doc")
                found[row["key"]] = doc if isinstance(doc, dict) else None
        return found

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


def _doc_error(doc_id: str, answer: Mapping[str, Any]) -> ChtError:
    """A per-doc error of a ``_bulk_docs`` answer as the error a single write would have raised."""
    error, reason = str(answer.get("error")), str(answer.get("reason") or "")
    message = f"CHT did not store {doc_id}: {error}" + (f" ({reason[:200]})" if reason else "")
    status = _PERMANENT_DOC_ERRORS.get(error)
    if status is not None:
        return ChtPermanentError(message, status=status, details=reason or None)
    return ChtTransientError(message, details=reason or None)


def _already_there(
    doc: Mapping[str, Any], existing: dict[str, Any] | ChtError | None
) -> RecordWrite | ChtError:
    """A conflicted write's result from the doc stored under its ``_id`` (read back)."""
    doc_id = str(doc["_id"])
    if isinstance(existing, ChtError):
        return existing
    if existing is None:
        # deleted between the two calls (the write would now succeed): try again later
        return ChtTransientError(f"CHT doc {doc_id} conflicted and then was gone", status=409)
    if existing.get("type") != doc.get("type") or existing.get("form") != doc.get("form"):
        return ChtPermanentError(f"CHT doc {doc_id} exists and is not a {doc.get('form')} record", status=409)
    return RecordWrite(doc_id, created=False)
