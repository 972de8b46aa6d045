"""A test double of a CHT instance's ``POST /api/v2/records`` (and ``/api/v1/records``), and of
``PUT``/``GET /medic/<id>`` (CouchDB through the CHT API, how the mediator writes its records).

Built from the cht-core 4.1/5.2 api source (``auth.js``, ``server-utils.js``, ``records.js``), not our client:

- Basic auth against configured users; without credentials or with bad ones: 401
  ``{"code":401,"error":"unauthorized"}`` when ``Accept`` is exactly ``application/json`` (4.1),
  else a 302 to ``/medic/login`` when a User-Agent is present, else 401 text with
  ``WWW-Authenticate``. After 10 failed logins within 10 s from one address: 429.
- ``can_create_records`` permission (by role, DB admins pass) else 403 ``Insufficient privileges``.
- Content type dispatch: JSON → JSON-form path; urlencoded → SMS path; anything else → plain 500.
  Malformed JSON → 500; bodies over 32 MiB → 413.
- JSON path: ``_meta`` missing/empty → 500 details ``Missing _meta property.``; form missing/empty →
  ``Missing required field: form``; non-string form → plain 500; form upper-cased and looked up as
  an exact key of ``forms`` → ``Form not found: <UPPER>``. Keys lower-cased, only declared fields kept,
  dotted keys nest, ``date`` fields → epoch ms, ``boolean`` 1/0 → true/false; validation problems
  go into ``doc.errors`` and the record is still saved. 200 ``{"success": true, "id": …}``.
- Errors: any status ≥ 500 is rendered ``500 "Server error"`` with ``details`` when public; JSON
  envelope only for ``Accept: application/json``, else ``text/plain``.

``/medic/<id>`` (cht-core api ``routing.js`` catch-all, then CouchDB): writes need ``can_edit``
(403 ``Insufficient privileges`` otherwise); ``PUT`` of a new id → 201 ``{"ok", "id", "rev"}``; of an
existing id without its current ``_rev`` → 409 ``{"error": "conflict", "reason": "Document update
conflict."}``; ``GET`` of an unknown id → 404 ``{"error": "not_found", "reason": "missing"}``. Docs
of ``type: data_record`` are kept with the records, so a test sees one list of CHT records.

``POST /medic/_bulk_docs`` (CouchDB ``chttpd_db.erl``, behind the same ``can_edit`` guard, as for an
online user): ``{"docs": [...]}`` else 400 ``bad_request``; 201 with one result per doc, in order,
``{"ok": true, "id", "rev"}`` or ``{"id", "error": "conflict", "reason": "Document update conflict."}``
for an existing id without its current ``_rev``; not atomic (the other docs are stored).
``POST /medic/_all_docs?include_docs=true`` with ``{"keys": [...]}``: a row per key, in order,
``{"id", "key", "value": {"rev"}, "doc"}`` or ``{"key", "error": "not_found"}``.

For failure tests the double can be told to answer the next calls with a fixed response
(``fail_next``), as a CHT behind a proxy does when it restarts (502/503) or crashes (bare 500);
a scripted answer replaces a whole ``_bulk_docs`` request. ``reject_doc`` makes CouchDB refuse one
doc of a request (``{"id", "error": "forbidden", "reason"}``, as a ``validate_doc_update`` does).
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, quote

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

MAX_REQUEST_SIZE = 32 * 1024 * 1024

# the reference config's form, as a real deployment of ours declares it (all lowercase fields).
FOLLOW_UP_FORMS: dict[str, Any] = {
    "INTEROP_FOLLOW_UP": {
        "meta": {"code": "interop_follow_up"},
        "fields": {
            name: {"type": "string", "required": False}
            for name in (
                "patient_uuid",
                "service_request_id",
                "task_id",
                "reason",
                "requester",
                "requester_id",
            )
        },
    },
    "INTEROP_FOLLOW_UP_CANCEL": {
        "meta": {"code": "interop_follow_up_cancel"},
        "fields": {
            name: {"type": "string", "required": False}
            for name in ("patient_uuid", "service_request_id", "reason")
        },
    },
}


class PublicError(Exception):
    """cht-core's PublicError: a 500 whose message is exposed as ``details``."""


@dataclass
class User:
    password: str
    roles: list[str]


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    url: str
    body: bytes


@dataclass
class ChtDouble:
    """The double's state: users, forms, permissions and every saved record and received request."""

    users: dict[str, User] = field(
        default_factory=lambda: {
            "admin": User("pass-admin-1", ["_admin"]),
            "chw": User("pass-chw-1", ["chw"]),
        }
    )
    forms: dict[str, Any] = field(default_factory=lambda: dict(FOLLOW_UP_FORMS))
    permissions: dict[str, list[str]] = field(
        default_factory=lambda: {
            "can_create_records": ["data_entry", "gateway", "program_officer", "chw_supervisor", "chw"],
            "can_edit": ["gateway", "program_officer", "chw_supervisor", "chw"],
        }
    )
    roles: set[str] = field(
        default_factory=lambda: {"data_entry", "gateway", "program_officer", "chw_supervisor", "chw"}
    )
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # other /medic docs
    requests: list[ReceivedRequest] = field(default_factory=list)
    _scripted: list[tuple[int, bytes, str]] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # doc id -> a validate_doc_update's reason
    _failed_logins: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- test controls --------------------------------------------------------------------------

    def fail_next(
        self, times: int, status: int, body: Any = None, *, content_type: str = "application/json"
    ) -> None:
        """Answer the next ``times`` record calls with this response instead of processing them."""
        raw = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""
        with self._lock:
            self._scripted.extend([(status, raw, content_type)] * times)

    def reject_doc(self, doc_id: str, reason: str = "not allowed") -> None:
        """Refuse writes of this doc id, as a ``validate_doc_update`` function throwing ``forbidden``."""
        with self._lock:
            self.rejected[doc_id] = reason

    def reset(self) -> None:
        """Forget what earlier tests sent and scripted: the double is shared by a module's tests."""
        with self._lock:
            self.records.clear()
            self.docs.clear()
            self.requests.clear()
            self._scripted.clear()
            self.rejected.clear()

    def records_of_form(self, form: str) -> list[dict[str, Any]]:
        return [doc for doc in list(self.records.values()) if doc["form"] == form]

    # -- the app --------------------------------------------------------------------------------

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v2/records", self._records, methods=["POST"]),
                Route("/api/v1/records", self._records, methods=["POST"]),
                Route("/medic/_bulk_docs", self._bulk_docs, methods=["POST"]),
                Route("/medic/_all_docs", self._all_docs, methods=["POST"]),
                Route("/medic/{doc_id}", self._medic_doc, methods=["GET", "PUT"]),
            ]
        )

    async def _received(self, request: Request) -> tuple[bytes, User | Response]:
        """The body, the request kept for the test, and the authenticated user (or the refusal)."""
        body = await request.body()
        self.requests.append(
            ReceivedRequest(request.method, request.url.path, dict(request.headers), str(request.url), body)
        )
        return body, self._authenticate(request)

    def _next_scripted(self) -> Response | None:
        """The next answer a test scripted with ``fail_next``, if any."""
        with self._lock:
            scripted = self._scripted.pop(0) if self._scripted else None
        if scripted is None:
            return None
        status, raw, content_type = scripted
        return Response(raw, status_code=status, media_type=content_type)

    def _refusal(self, request: Request, user: User, permission: str) -> Response | None:
        """A write's scripted answer, or its 403 for a user without ``permission``; None: go on."""
        scripted = self._next_scripted()
        if scripted is not None:
            return scripted
        if not self._has_permission(user, permission):
            return self._error(request, 403, "Insufficient privileges")
        return None

    async def _records(self, request: Request) -> Response:
        body, user = await self._received(request)
        if isinstance(user, Response):
            return user
        refused = self._refusal(request, user, "can_create_records")
        if refused is not None:
            return refused
        if len(body) > MAX_REQUEST_SIZE:
            return self._error(request, 413, "request entity too large")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if content_type == "application/json":
                try:
                    parsed = orjson.loads(body) if body else {}
                except orjson.JSONDecodeError:
                    return self._server_error(request, None)  # body-parser failure → global 500
                doc = self._json_record(parsed)
            elif content_type == "application/x-www-form-urlencoded":
                doc = self._sms_record(parse_qs(body.decode()))
            else:
                return self._server_error(request, None)  # "Content type not supported." (not public)
        except PublicError as exc:
            return self._server_error(request, str(exc))
        except TypeError:
            return self._server_error(request, None)
        with self._lock:
            self.records[doc["_id"]] = doc
        return JSONResponse({"success": True, "id": doc["_id"]})

    async def _medic_doc(self, request: Request) -> Response:
        """``GET``/``PUT /medic/<id>`` as CouchDB answers them behind the CHT API's guard."""
        body, user = await self._received(request)
        if isinstance(user, Response):
            return user
        doc_id = str(request.path_params["doc_id"])
        if request.method == "GET":
            with self._lock:
                found = self.records.get(doc_id) or self.docs.get(doc_id)
            if found is None:
                return JSONResponse({"error": "not_found", "reason": "missing"}, status_code=404)
            return JSONResponse(found)
        refused = self._refusal(request, user, "can_edit")
        if refused is not None:
            return refused
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return JSONResponse({"error": "bad_request", "reason": "invalid UTF-8 JSON"}, status_code=400)
        if not isinstance(doc, dict):
            return JSONResponse({"error": "bad_request", "reason": "Document must be a JSON object"}, 400)
        with self._lock:
            result = self._store_locked(doc_id, doc)
        if "error" in result:
            return JSONResponse(
                {"error": result["error"], "reason": result["reason"]},
                status_code=409 if result["error"] == "conflict" else 403,
            )
        return JSONResponse(result, status_code=201)

    async def _bulk_docs(self, request: Request) -> Response:
        """``POST /medic/_bulk_docs`` as CouchDB answers it (new edits): a result per doc, in order."""
        body, user = await self._received(request)
        if isinstance(user, Response):
            return user
        refused = self._refusal(request, user, "can_edit")
        if refused is not None:
            return refused
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return JSONResponse({"error": "bad_request", "reason": "invalid UTF-8 JSON"}, status_code=400)
        if not isinstance(parsed, dict) or "docs" not in parsed:
            reason = "POST body must include `docs` parameter."
            return JSONResponse({"error": "bad_request", "reason": reason}, status_code=400)
        docs = parsed["docs"]
        if not isinstance(docs, list):
            reason = "`docs` parameter must be an array."
            return JSONResponse({"error": "bad_request", "reason": reason}, status_code=400)
        if not all(isinstance(doc, dict) for doc in docs):
            reason = "Document must be a JSON object"
            return JSONResponse({"error": "bad_request", "reason": reason}, status_code=400)
        if parsed.get("new_edits", True) is not True:
            reason = "the double stores new edits only"
            return JSONResponse({"error": "bad_request", "reason": reason}, status_code=400)
        with self._lock:
            results = [self._store_locked(str(doc.get("_id") or uuid.uuid4().hex), doc) for doc in docs]
        return JSONResponse(results, status_code=201)

    def _store_locked(self, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        """One doc written with CouchDB's new-edits rule; its ``_bulk_docs`` result."""
        if doc_id in self.rejected:
            return {"id": doc_id, "error": "forbidden", "reason": self.rejected[doc_id]}
        current = self.records.get(doc_id) or self.docs.get(doc_id)
        if current is not None and doc.get("_rev") != current["_rev"]:
            return {"id": doc_id, "error": "conflict", "reason": "Document update conflict."}
        generation = int(current["_rev"].split("-")[0]) + 1 if current is not None else 1
        stored = {**doc, "_id": doc_id, "_rev": f"{generation}-{uuid.uuid4().hex}"}
        (self.records if stored.get("type") == "data_record" else self.docs)[doc_id] = stored
        return {"ok": True, "id": doc_id, "rev": stored["_rev"]}

    async def _all_docs(self, request: Request) -> Response:
        """``POST /medic/_all_docs`` with ``keys`` (``include_docs=true`` adds each doc)."""
        body, user = await self._received(request)
        if isinstance(user, Response):
            return user
        try:
            parsed = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return JSONResponse({"error": "bad_request", "reason": "invalid UTF-8 JSON"}, status_code=400)
        keys = parsed.get("keys") if isinstance(parsed, dict) else None
        if not isinstance(keys, list):
            reason = "`keys` body member must be an array."
            return JSONResponse({"error": "bad_request", "reason": reason}, status_code=400)
        include_docs = request.query_params.get("include_docs") == "true"
        rows: list[dict[str, Any]] = []
        with self._lock:
            for key in keys:
                found = self.records.get(str(key)) or self.docs.get(str(key))
                if found is None:
                    rows.append({"key": key, "error": "not_found"})
                    continue
                row: dict[str, Any] = {"id": key, "key": key, "value": {"rev": found["_rev"]}}
                if include_docs:
                    row["doc"] = found
                rows.append(row)
            total = len(self.records) + len(self.docs)
        return JSONResponse({"total_rows": total, "offset": None, "rows": rows})

    # -- auth (api/src/auth.js) --------------------------------------------------------------------

    def _authenticate(self, request: Request) -> User | Response:
        ip = request.client.host if request.client else "?"
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failed_logins[ip] if now - t < 10]
            self._failed_logins[ip] = recent
        header = request.headers.get("authorization", "")
        if header and len(recent) >= 10:
            return self._error(request, 429, "Too Many Requests")
        scheme, _, value = header.partition(" ")
        user: User | None = None
        if scheme.lower() == "basic" and value:
            try:
                name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                name, password = "", ""
            candidate = self.users.get(name)
            if candidate is not None and candidate.password == password:
                user = candidate
        if user is not None:
            return user
        with self._lock:
            self._failed_logins[ip].append(now)
        if request.headers.get("accept") == "application/json":
            return JSONResponse({"code": 401, "error": "unauthorized"}, status_code=401)
        if request.headers.get("user-agent"):
            return RedirectResponse(
                f"/medic/login?redirect={quote(str(request.url), safe='')}", status_code=302
            )
        return PlainTextResponse(
            "not logged in", status_code=401, headers={"WWW-Authenticate": 'Basic realm="Medic Web Services"'}
        )

    def _has_permission(self, user: User, permission: str) -> bool:
        if "_admin" in user.roles or "admin" in user.roles:
            return True
        allowed = self.permissions.get(permission, [])
        return any(role in allowed and role in self.roles for role in user.roles)

    # -- rendering (server-utils.js; 4.1: JSON only for exactly application/json) ------------------

    def _wants_json(self, request: Request) -> bool:
        return request.headers.get("accept") == "application/json"

    def _error(self, request: Request, status: int, message: str) -> Response:
        if self._wants_json(request):
            return JSONResponse({"code": status, "error": message}, status_code=status)
        return PlainTextResponse(message, status_code=status)

    def _server_error(self, request: Request, details: str | None) -> Response:
        if self._wants_json(request):
            envelope: dict[str, Any] = {"code": 500, "error": "Server error"}
            if details is not None:
                envelope["details"] = details
            return JSONResponse(envelope, status_code=500)
        text = "Server error" + (f': "{details}"' if details is not None else "")
        return PlainTextResponse(text, status_code=500)

    # -- records (services/records.js) -------------------------------------------------------------

    def _json_record(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise PublicError("Missing _meta property.")
        meta = body.get("_meta")
        if not meta or not isinstance(meta, dict):
            raise PublicError("Missing _meta property.")
        form = meta.get("form")
        if form is None or form == "":
            raise PublicError("Missing required field: form")
        if not isinstance(form, str):
            raise TypeError("form.toUpperCase is not a function")
        code = form.upper()
        definition = self.forms.get(code)
        if definition is None:
            raise PublicError(f"Form not found: {code}")
        values = {k.lower(): v for k, v in body.items() if k != "_meta"}
        fields, errors = self._fields(definition, values)
        doc: dict[str, Any] = {
            "_id": str(uuid.uuid4()),
            "type": "data_record",
            "form": code,
            "errors": errors,
            "tasks": [],
            "fields": fields,
            "reported_date": self._reported_date(meta.get("reported_date")),
            "sms_message": {**meta, "form": code},
        }
        if meta.get("from"):
            doc["from"] = meta["from"]
        return doc

    def _sms_record(self, form: dict[str, list[str]]) -> dict[str, Any]:
        if not form.get("from"):
            raise PublicError("Missing required value: from")
        if not form.get("message"):
            raise PublicError("Missing required field: message")
        message = form["message"][0]
        code = message.split()[0].upper() if message.split() else ""
        return {
            "_id": str(uuid.uuid4()),
            "type": "data_record",
            "form": code if code in self.forms else None,
            "from": form["from"][0],
            "errors": [],
            "tasks": [],
            "fields": {},
            "reported_date": int(time.time() * 1000),
            "sms_message": {"message": message, "from": form["from"][0]},
        }

    def _fields(self, definition: dict[str, Any], values: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        declared: dict[str, Any] = {
            k: v for k, v in (definition.get("fields") or {}).items() if isinstance(v, dict)
        }
        fields: dict[str, Any] = {}
        errors: list[dict[str, str]] = []
        missing = False
        for key, spec in declared.items():
            if key not in values:
                if spec.get("required"):
                    missing = True
                continue
            value = self._coerce(spec.get("type"), values[key])
            if not self._type_ok(spec.get("type"), value):
                errors.append({"code": "sys.incorrect_type", "message": f"Incorrect type for {key}"})
            target = fields
            *parents, leaf = key.split(".")
            for part in parents:
                target = target.setdefault(part, {})
            target[leaf] = value
        if missing:
            errors.append({"code": "sys.missing_fields", "message": "Missing fields"})
        return fields, errors

    @staticmethod
    def _coerce(kind: Any, value: Any) -> Any:
        if kind == "date":
            if isinstance(value, int | float):
                return int(value)
            try:
                return int(datetime.fromisoformat(str(value)).timestamp() * 1000)
            except ValueError:
                return None
        if kind == "boolean" and value in (1, 0, "1", "0"):
            return str(value) == "1"
        return value

    @staticmethod
    def _type_ok(kind: Any, value: Any) -> bool:
        if kind == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if kind == "string":
            return isinstance(value, str)
        if kind == "boolean":
            return isinstance(value, bool)
        if kind == "complex":
            return isinstance(value, dict)
        return True

    @staticmethod
    def _reported_date(value: Any) -> int:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, str):
            if value.isdigit() and len(value) >= 13:
                return int(value)
            try:
                return int(datetime.fromisoformat(value).timestamp() * 1000)
            except ValueError:
                pass
        return int(time.time() * 1000)
