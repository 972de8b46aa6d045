"""The CHT sandbox ASGI app: the CHT API subset the LTFU workflow touches, with the CHT's rules.

Thin handlers: authenticate, check content type and permissions in the CHT's order, call the
domain module, render with the CHT's envelope (``http.py``). ``/medic/*`` answers as CouchDB does.
``/sandbox/*`` is what the real CHT does not have (tasks API, CHW page, health).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cht_interop.sandbox import contacts, records, users
from cht_interop.sandbox.auth import UserCtx, has_permissions, is_online, parse_basic
from cht_interop.sandbox.config import SandboxConfig
from cht_interop.sandbox.core import Sandbox, is_contact
from cht_interop.sandbox.errors import ApiError, bad_request, forbidden
from cht_interop.sandbox.http import (
    SESSION_COOKIE,
    couch_error,
    current_user,
    media_type,
    not_logged_in,
    parse_json_body,
    read_body,
    render_error,
    respond,
    sign_session,
)
from cht_interop.sandbox.js import JsError
from cht_interop.sandbox.ratelimit import FailedLoginLimiter
from cht_interop.sandbox.scope import Scope, scope_for
from cht_interop.sandbox.sentinel import Sentinel
from cht_interop.sandbox.store import MEDIC, Change, Doc, StoreError, as_served
from cht_interop.sandbox.tasks import TaskRulesMissing, compute_tasks, public_task

log = logging.getLogger("cht_interop.sandbox")

Handler = Callable[[Request], Awaitable[Response]]
OFFLINE_DENIED = "Offline users are not allowed access to this endpoint"


class SandboxState:
    def __init__(self, sandbox: Sandbox, sentinel: Sentinel, session_secret: bytes) -> None:
        self.sandbox = sandbox
        self.sentinel = sentinel
        self.session_secret = session_secret
        self.limiter = FailedLoginLimiter()
        self.changed = asyncio.Condition()  # notified on every medic write (longpoll _changes)


def limiter_keys(request: Request) -> tuple[list[str], bool]:
    """The caller's rate-limit keys, and whether the request carries credentials."""
    creds = parse_basic(request.headers.get("authorization"))
    ip = request.client.host if request.client else None
    keys = FailedLoginLimiter.keys(ip, creds[0] if creds else None, creds[1] if creds else None)
    return keys, creds is not None


def state_of(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


def endpoint(*, show_prompt: bool = False) -> Callable[[Handler], Handler]:
    """Render domain errors with the CHT envelope (``ApiError``) or CouchDB's (``StoreError``)."""

    def wrap(fn: Handler) -> Handler:
        async def handler(request: Request) -> Response:
            limiter = state_of(request).limiter
            keys, has_credentials = limiter_keys(request)
            if has_credentials and limiter.exhausted(keys):
                response = respond(request, 429, "Too Many Requests")
            else:
                response = await _guarded(fn, request)
            if response.status_code in (401, 429):
                limiter.consume(keys)
            return response

        async def _guarded(fn: Handler, request: Request) -> Response:
            try:
                return await fn(request)
            except ApiError as exc:
                return render_error(request, exc, show_prompt=show_prompt)
            except StoreError as exc:
                return couch_error(exc)
            except TaskRulesMissing as exc:
                return JSONResponse({"error": "no_task_rules", "reason": str(exc)}, status_code=503)
            except JsError as exc:
                return JSONResponse({"error": "task_rules_failed", "reason": str(exc)}, status_code=500)
            except Exception:
                log.exception("sandbox: unexpected error on %s %s", request.method, request.url.path)
                return render_error(request, ApiError(500, "Server error"))

        return handler

    return wrap


def require_user(request: Request) -> UserCtx:
    state = state_of(request)
    user = current_user(request, state.sandbox, state.session_secret)
    if user is None:
        raise ApiError(401, "unauthorized")
    return user


def require_permissions(request: Request, *permissions: str) -> UserCtx:
    user = require_user(request)
    if not has_permissions(state_of(request).sandbox.settings(), user, *permissions):
        raise forbidden("Insufficient privileges")
    return user


def offline(request: Request, user: UserCtx) -> bool:
    return not is_online(state_of(request).sandbox.settings(), user.roles)


def firewall(request: Request, user: UserCtx) -> None:
    if offline(request, user):
        raise ApiError(403, "forbidden", OFFLINE_DENIED)


def require_exact_json(request: Request) -> None:
    if request.headers.get("content-type") != "application/json":
        raise bad_request("Content-Type must be application/json")


# -- /api ------------------------------------------------------------------------------------


@endpoint()
async def post_people(request: Request) -> Response:
    require_exact_json(request)
    body = parse_json_body(await read_body(request))
    require_permissions(request, "can_edit", "can_create_people")
    if body == {} or body == []:
        raise bad_request("Request body is empty or Content-Type header was not set to application/json.")
    return JSONResponse(contacts.create_person(state_of(request).sandbox, body))


@endpoint()
async def post_places(request: Request) -> Response:
    require_exact_json(request)
    body = parse_json_body(await read_body(request))
    require_permissions(request, "can_edit", "can_create_places")
    if body == {} or body == []:
        raise bad_request("Request body is empty or Content-Type header was not set to application/json.")
    return JSONResponse(contacts.create_place(state_of(request).sandbox, body))


@endpoint()
async def post_users(request: Request) -> Response:
    kind = request.headers.get("content-type")
    if kind not in ("application/json", "text/csv"):
        raise bad_request("Content-Type must be one of application/json or text/csv")
    if kind == "text/csv":
        raise bad_request("The sandbox accepts users as application/json only")
    body = parse_json_body(await read_body(request))
    require_permissions(request, "can_edit", "can_create_users")
    if body == {} or body == []:
        raise bad_request("Request body is empty or Content-Type header was not set to application/json.")
    sandbox = state_of(request).sandbox
    if isinstance(body, list):
        results: list[Any] = []
        for item in body:
            try:
                results.append(users.create_user(sandbox, item))
            except ApiError as exc:
                message = exc.message.get("message") if isinstance(exc.message, dict) else exc.message
                results.append({"error": message})
        return JSONResponse(results)
    return JSONResponse(users.create_user(sandbox, body))


@endpoint()
async def post_records(request: Request) -> Response:
    raw = await read_body(request)
    kind = media_type(request)
    sandbox = state_of(request).sandbox
    if kind == "application/json" or kind.endswith("+json"):
        body = parse_json_body(raw)
        require_permissions(request, "can_create_records")
        return JSONResponse(records.create_json_record(sandbox, body))
    if kind == "application/x-www-form-urlencoded":
        from urllib.parse import parse_qsl

        form = dict(parse_qsl(raw.decode(errors="replace"), keep_blank_values=True))
        require_permissions(request, "can_create_records")
        return JSONResponse(records.create_sms_record(sandbox, form))
    require_permissions(request, "can_create_records")
    raise ApiError(500, "Server error")  # "Content type not supported." is not a public message


@endpoint(show_prompt=True)
async def get_settings(request: Request) -> Response:
    require_user(request)
    return JSONResponse(state_of(request).sandbox.settings())


@endpoint(show_prompt=True)
async def put_settings(request: Request) -> Response:
    require_exact_json(request)
    body = parse_json_body(await read_body(request))
    user = require_user(request)
    sandbox = state_of(request).sandbox
    if not has_permissions(sandbox.settings(), user, "can_configure"):
        raise ApiError(403, "Insufficient permissions")
    if not isinstance(body, dict):
        raise bad_request("app_settings.json does not conform to schema")
    params = request.query_params
    mode = "overwrite" if params.get("overwrite") else "replace" if params.get("replace") else "extend"
    updated = sandbox.update_settings(body, mode=mode)
    return JSONResponse({"success": True, "updated": updated})


@endpoint()
async def put_credentials(request: Request) -> Response:
    user = current_user(request, state_of(request).sandbox, state_of(request).session_secret)
    if user is not None:
        firewall(request, user)
    key = unquote(request.path_params.get("key", ""))
    raw = await read_body(request)
    if not key:
        raise bad_request('Missing required param "key"')
    if not raw:
        raise bad_request("Missing required request body")
    if user is None:
        raise ApiError(401, "unauthorized")
    if not user.is_db_admin:
        raise ApiError(403, "Insufficient permissions")
    state_of(request).sandbox.vault.set(key, raw.decode())
    return JSONResponse({"ok": True})


# -- /medic (CouchDB through the CHT API) ----------------------------------------------------


def _couch_json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        raise StoreError(400, "bad_request", "invalid UTF-8 JSON") from None


def _require_editor(request: Request) -> UserCtx:
    """The catch-all guard on CouchDB writes: ``can_edit``."""
    return require_permissions(request, "can_edit")


def _scope(request: Request, user: UserCtx) -> Scope | None:
    return scope_for(state_of(request).sandbox, user) if offline(request, user) else None


def _allowed_after(scope: Scope, sandbox: Sandbox, doc: Doc) -> bool:
    if is_contact(doc):
        facility = scope.user.facility_id
        return bool(facility) and facility in [doc.get("_id"), *sandbox.lineage_ids(doc)]
    return scope.allows(doc)


@endpoint()
async def bulk_docs(request: Request) -> Response:
    user = _require_editor(request)
    if media_type(request) != "application/json":
        raise StoreError(415, "bad_content_type", "Content-Type must be application/json")
    body = _couch_json(await read_body(request))
    if not isinstance(body, dict) or "docs" not in body:
        raise StoreError(400, "bad_request", "POST body must include `docs` parameter.")
    docs = body["docs"]
    if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
        raise StoreError(400, "bad_request", "`docs` parameter must be an array.")
    sandbox = state_of(request).sandbox
    new_edits = body.get("new_edits", True) is not False
    scope = _scope(request, user)
    allowed: list[Doc] = docs
    denied: dict[int, dict[str, Any]] = {}
    if scope is not None:
        allowed = []
        for index, doc in enumerate(docs):
            existing = sandbox.store.find(MEDIC, str(doc.get("_id"))) if doc.get("_id") else None
            ok = (existing is None or scope.allows(existing)) and (
                doc.get("_deleted") or _allowed_after(scope, sandbox, doc)
            )
            if ok:
                allowed.append(doc)
            else:
                denied[index] = {"id": doc.get("_id"), "error": "forbidden"}
    results = sandbox.store.bulk(MEDIC, allowed, new_edits=new_edits)
    if not new_edits:
        return JSONResponse([], status_code=201)
    merged: list[dict[str, Any]] = []
    it = iter(results)
    for index in range(len(docs)):
        merged.append(denied[index] if index in denied else next(it))
    return JSONResponse(merged, status_code=201)


@endpoint()
async def all_docs(request: Request) -> Response:
    user = require_user(request)
    sandbox = state_of(request).sandbox
    scope = _scope(request, user)
    params = request.query_params
    include_docs = params.get("include_docs") == "true"
    keys: list[str] | None = None
    if request.method == "POST":
        body = _couch_json(await read_body(request)) or {}
        keys = body.get("keys") if isinstance(body, dict) else None
        include_docs = include_docs or bool(isinstance(body, dict) and body.get("include_docs"))
    elif params.get("keys"):
        keys = _couch_json(params["keys"].encode())
    rows: list[dict[str, Any]] = []
    if keys is not None:
        for key in keys:
            doc = sandbox.store.find(MEDIC, str(key))
            if doc is None or (scope is not None and not scope.allows(doc)):
                rows.append({"key": key, "error": "not_found"})
                continue
            rows.append(_row(doc, include_docs))
    else:
        docs = [d for d in sandbox.store.all(MEDIC) if scope is None or scope.allows(d)]
        start = _couch_json(params["startkey"].encode()) if params.get("startkey") else None
        end = _couch_json(params["endkey"].encode()) if params.get("endkey") else None
        for doc in docs:
            if (start is not None and doc["_id"] < start) or (end is not None and doc["_id"] > end):
                continue
            rows.append(_row(doc, include_docs))
        if params.get("limit", "").isdigit():
            rows = rows[: int(params["limit"])]
    total = sandbox.store.count(MEDIC) if scope is None else len(rows)
    return JSONResponse({"total_rows": total, "offset": 0, "rows": rows})


def _row(doc: Doc, include_docs: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"id": doc["_id"], "key": doc["_id"], "value": {"rev": doc["_rev"]}}
    if include_docs:
        row["doc"] = as_served(doc)
    return row


def _seq(n: int) -> str:
    return f"{n}-sandbox"


def _parse_since(value: str | None, last: int) -> int:
    if not value or value == "0":
        return 0
    if value == "now":
        return last
    head = value.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


@endpoint()
async def changes(request: Request) -> Response:
    user = require_user(request)
    sandbox = state_of(request).sandbox
    params = request.query_params
    last = sandbox.store.last_seq(MEDIC)
    since = _parse_since(params.get("since"), last)
    include_docs = params.get("include_docs") == "true"
    limit = int(params["limit"]) if params.get("limit", "").isdigit() else None
    scope = _scope(request, user)
    if params.get("feed") == "longpoll" and since >= last:
        timeout = min(int(params["timeout"]) if params.get("timeout", "").isdigit() else 60000, 60000) / 1000
        changed = state_of(request).changed
        async with changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    changed.wait_for(lambda: sandbox.store.last_seq(MEDIC) > since), timeout
                )
        last = sandbox.store.last_seq(MEDIC)
    results = []
    for change in sandbox.store.changes(MEDIC, since):
        if scope is not None and change.id not in ("settings", f"org.couchdb.user:{user.name}"):
            continue  # 5.2: offline users get only their default docs from this endpoint
        row: dict[str, Any] = {"seq": _seq(change.seq), "id": change.id, "changes": [{"rev": change.rev}]}
        if change.deleted:
            row["deleted"] = True
        if include_docs:
            row["doc"] = as_served(change.doc)
        results.append(row)
        if limit is not None and len(results) >= limit:
            break
    last_seq = int(results[-1]["seq"].split("-")[0]) if results and limit is not None else last
    pending = len([c for c in sandbox.store.changes(MEDIC, last_seq)]) if limit is not None else 0
    return JSONResponse({"results": results, "last_seq": _seq(last_seq), "pending": pending})


@endpoint()
async def find(request: Request) -> Response:
    user = require_user(request)
    firewall(request, user)
    body = _couch_json(await read_body(request))
    if not isinstance(body, dict) or "selector" not in body:
        raise StoreError(400, "missing_required_key", "Missing required key: selector")
    selector = body["selector"]
    if not isinstance(selector, dict):
        raise StoreError(400, "invalid_selector_json", "Selector must be a JSON object")
    from cht_interop.sandbox.mango import matches, project, validate_selector

    validate_selector(selector)
    sandbox = state_of(request).sandbox
    docs = [d for d in sandbox.store.all(MEDIC) if matches(d, selector)]
    skip = int(body.get("skip") or 0)
    limit = int(body.get("limit") or 25)
    docs = [as_served(d) for d in docs[skip : skip + limit]]
    fields = body.get("fields")
    if isinstance(fields, list):
        docs = [project(d, fields) for d in docs]
    return JSONResponse(
        {
            "docs": docs,
            "bookmark": "nil",
            "warning": "No matching index found, create an index to optimize query time.",
        }
    )


@endpoint()
async def doc_endpoint(request: Request) -> Response:
    doc_id = request.path_params["doc_id"]
    sandbox = state_of(request).sandbox
    if request.method == "GET":
        user = require_user(request)
        doc = sandbox.store.get(MEDIC, doc_id)
        scope = _scope(request, user)
        if scope is not None and not scope.allows(doc):
            raise StoreError(403, "forbidden", "Insufficient privileges")
        inline = request.query_params.get("attachments") == "true"
        return JSONResponse(as_served(doc, attachments=inline), headers={"ETag": f'"{doc["_rev"]}"'})
    user = _require_editor(request)
    scope = _scope(request, user)
    existing = sandbox.store.find(MEDIC, doc_id)
    if scope is not None and existing is not None and not scope.allows(existing):
        raise StoreError(403, "forbidden", "Insufficient privileges")
    if request.method == "DELETE":
        rev = request.query_params.get("rev") or (request.headers.get("if-match") or "").strip('"')
        if existing is None:
            raise StoreError(404, "not_found", "missing")
        _id, new_rev = sandbox.store.put(MEDIC, {"_id": doc_id, "_rev": rev or None, "_deleted": True})
        return JSONResponse({"ok": True, "id": doc_id, "rev": new_rev})
    body = _couch_json(await read_body(request))
    if not isinstance(body, dict):
        raise StoreError(400, "bad_request", "Document must be a JSON object")
    body["_id"] = doc_id
    if request.query_params.get("rev"):
        body["_rev"] = request.query_params["rev"]
    if scope is not None and not body.get("_deleted") and not _allowed_after(scope, sandbox, body):
        raise StoreError(403, "forbidden", "Insufficient privileges")
    _id, rev = sandbox.store.put(MEDIC, body)
    return JSONResponse({"ok": True, "id": doc_id, "rev": rev}, status_code=201, headers={"ETag": f'"{rev}"'})


@endpoint()
async def couch_catch_all(request: Request) -> Response:
    """Any other CouchDB path: offline users are firewalled; the sandbox serves no more of CouchDB."""
    user = require_user(request)
    firewall(request, user)
    raise StoreError(404, "not_found", "The sandbox does not emulate this CouchDB endpoint")


# -- /sandbox --------------------------------------------------------------------------------


@endpoint()
async def sandbox_tasks(request: Request) -> Response:
    """A user's tasks with their states, computed from the installed task rules (sandbox-only API)."""
    user = require_user(request)
    name = request.query_params.get("user") or user.name
    if name != user.name and not user.is_db_admin:
        raise forbidden("Insufficient privileges")
    sandbox = state_of(request).sandbox
    target = sandbox.auth.lookup(name)
    if target is None:
        raise ApiError(404, f"User {name} not found")
    docs = compute_tasks(sandbox, target)
    return JSONResponse({"user": name, "tasks": [public_task(d) for d in docs]})


async def health(_request: Request) -> Response:
    return JSONResponse({"status": "ok", "sandbox": True})


@endpoint()
async def medic_login(request: Request) -> Response:
    """``POST /medic/login``: cookie session for JSON ``{user, password}`` (302 + AuthSession)."""
    require_exact_json(request)
    body = parse_json_body(await read_body(request))
    state = state_of(request)
    if not isinstance(body, dict):
        raise ApiError(401, "Not logged in")
    user = state.sandbox.auth.check(str(body.get("user") or ""), str(body.get("password") or ""))
    if user is None:
        return JSONResponse({"error": "Not logged in"}, status_code=401)
    target = str(body.get("redirect") or "/")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    response = Response(target, status_code=302, headers={"Location": target}, media_type="text/plain")
    response.set_cookie(
        SESSION_COOKIE, sign_session(state.session_secret, user.name), httponly=True, samesite="lax", path="/"
    )
    response.set_cookie(
        "userCtx", json.dumps({"name": user.name, "roles": user.roles}, separators=(",", ":")), path="/"
    )
    response.set_cookie("locale", str(body.get("locale") or "en"), path="/")
    return response


async def unauthenticated_login_page(request: Request) -> Response:
    """Where the CHT redirects humans that are not logged in; the sandbox points at the CHW page."""
    return not_logged_in(request, show_prompt=True)


def create_sandbox_app(config: SandboxConfig) -> Starlette:
    """The sandbox app; its lifespan opens the store, starts Sentinel and closes V8 at shutdown."""
    session_secret = config.session_secret or secrets.token_bytes(32)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sandbox = Sandbox(config)
        http = httpx.AsyncClient(verify=True, follow_redirects=False)
        sentinel = Sentinel(sandbox, http)
        sandbox.store.on_write(sentinel.notify)
        state = SandboxState(sandbox, sentinel, session_secret)
        app.state.sandbox = state
        loop = asyncio.get_running_loop()

        async def _announce() -> None:
            async with state.changed:
                state.changed.notify_all()

        def on_write(db: str, _change: Change) -> None:
            if db == MEDIC:
                loop.call_soon_threadsafe(lambda: loop.create_task(_announce()))

        sandbox.store.on_write(on_write)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(sentinel.run_feed(stop), name="sandbox-sentinel-feed"),
            asyncio.create_task(sentinel.run_scheduler(stop), name="sandbox-sentinel-schedule"),
        ]
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await http.aclose()
            sandbox.close()

    from cht_interop.sandbox.chw import chw_routes

    routes = [
        Route("/api/v1/people", post_people, methods=["POST"]),
        Route("/api/v1/places", post_places, methods=["POST"]),
        Route("/api/v2/users", post_users, methods=["POST"]),
        Route("/api/v1/records", post_records, methods=["POST"]),
        Route("/api/v2/records", post_records, methods=["POST"]),
        Route("/api/v1/settings", get_settings, methods=["GET"]),
        Route("/api/v1/settings", put_settings, methods=["PUT"]),
        Route("/api/v1/credentials/{key:path}", put_credentials, methods=["PUT"]),
        Route("/medic/_bulk_docs", bulk_docs, methods=["POST"]),
        Route("/medic/_all_docs", all_docs, methods=["GET", "POST"]),
        Route("/medic/_changes", changes, methods=["GET"]),
        Route("/medic/_find", find, methods=["POST"]),
        Route("/medic/login", unauthenticated_login_page, methods=["GET"]),
        Route("/medic/login", medic_login, methods=["POST"]),
        # a doc id or _design/<name>; other underscore paths fall to the catch-all
        Route("/medic/{doc_id:path}", _doc_or_catch_all, methods=["GET", "PUT", "DELETE"]),
        Route("/medic/{rest:path}", couch_catch_all, methods=["POST"]),
        Route("/sandbox/api/tasks", sandbox_tasks, methods=["GET"]),
        Route("/sandbox/health", health, methods=["GET"]),
        *chw_routes(),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


@endpoint()
async def attachment(request: Request) -> Response:
    """``GET /medic/<id>/<attachment>``: the attachment's bytes with its content type."""
    doc_id, _, name = str(request.path_params["doc_id"]).partition("/")
    user = require_user(request)
    doc = state_of(request).sandbox.store.get(MEDIC, doc_id)
    scope = _scope(request, user)
    if scope is not None and not scope.allows(doc):
        raise StoreError(403, "forbidden", "Insufficient privileges")
    att = (doc.get("_attachments") or {}).get(name)
    if not isinstance(att, dict):
        raise StoreError(404, "not_found", "Document is missing attachment")
    return Response(base64.b64decode(att["data"]), media_type=att["content_type"])


async def _doc_or_catch_all(request: Request) -> Response:
    doc_id: str = request.path_params["doc_id"]
    head, _, rest = doc_id.partition("/")
    if request.method == "GET" and rest and not head.startswith("_"):
        return await attachment(request)
    if (doc_id.startswith("_") and not doc_id.startswith("_design/")) or "/" in doc_id.removeprefix(
        "_design/"
    ):
        return await couch_catch_all(request)
    return await doc_endpoint(request)
