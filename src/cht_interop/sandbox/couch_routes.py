"""``/medic/*``: CouchDB through the CHT API, answering as CouchDB does; offline users see only
the documents their place allows, and are firewalled from the rest.

``/medic/login`` is the CHT API's own (``api_routes``); its route must come before these.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from cht_interop.sandbox import views
from cht_interop.sandbox.auth import UserCtx
from cht_interop.sandbox.core import EMULATED_VERSION, Sandbox, is_contact
from cht_interop.sandbox.guards import (
    endpoint,
    firewall,
    offline,
    require_permissions,
    require_user,
    state_of,
)
from cht_interop.sandbox.http import (
    SESSION_COOKIE,
    current_user,
    media_type,
    read_body,
    session_cookie_header,
    sign_session,
)
from cht_interop.sandbox.mango import matches, project, validate_selector
from cht_interop.sandbox.scope import Scope, scope_for
from cht_interop.sandbox.store import MEDIC, Doc, StoreError, as_served, new_id


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
async def session(request: Request) -> Response:
    """``/_session``, which the CHT passes to CouchDB for anyone: cookie login (PouchDB and
    cht-conf log in here, then send only the cookie), who am I, log out."""
    state = state_of(request)
    if request.method == "POST":
        raw = await read_body(request)
        if media_type(request) == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(raw.decode(errors="replace")))
        else:
            parsed = _couch_json(raw)
            form = parsed if isinstance(parsed, dict) else {}
        user = state.sandbox.auth.check(str(form.get("name") or ""), str(form.get("password") or ""))
        if user is None:
            return JSONResponse(
                {"error": "unauthorized", "reason": "Name or password is incorrect."}, status_code=401
            )
        response = JSONResponse({"ok": True, "name": user.name, "roles": user.roles})
        response.headers["Set-Cookie"] = session_cookie_header(sign_session(state.session_secret, user.name))
        return response
    if request.method == "DELETE":
        response = JSONResponse({"ok": True})
        response.headers["Set-Cookie"] = f"{SESSION_COOKIE}=; Version=1; Path=/; HttpOnly; Max-Age=0"
        return response
    current = current_user(request, state.sandbox, state.session_secret)
    if current is None:  # require_valid_user = true: no anonymous session info
        return JSONResponse({"error": "unauthorized", "reason": "Authentication required."}, status_code=401)
    method = "default" if request.headers.get("authorization") else "cookie"
    return JSONResponse(
        {
            "ok": True,
            "userCtx": {"name": current.name, "roles": current.roles},
            "info": {"authentication_handlers": ["cookie", "default"], "authenticated": method},
        }
    )


@endpoint()
async def database_info(request: Request) -> Response:
    """``GET /medic/``: CouchDB's database info (clients check the database exists with it)."""
    user = require_user(request)
    firewall(request, user)
    store = state_of(request).sandbox.store
    return JSONResponse(
        {
            "db_name": MEDIC,
            "update_seq": _seq(store.last_seq(MEDIC)),
            "purge_seq": "0-sandbox",
            "sizes": {"file": 0, "external": 0, "active": 0},
            "props": {},
            "doc_del_count": store.count(MEDIC, deleted=True),
            "doc_count": store.count(MEDIC),
            "disk_format_version": 8,
            "compact_running": False,
            "cluster": {"q": 1, "n": 1, "w": 1, "r": 1},
            "instance_start_time": "0",
        }
    )


async def database_redirect(_request: Request) -> Response:
    """``/medic`` without the slash: the CHT redirects (Express ``res.redirect``), before auth."""
    body = "Found. Redirecting to /medic/"
    return PlainTextResponse(body, status_code=302, headers={"Location": "/medic/"})


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
    if keys is not None and not isinstance(keys, list):
        raise StoreError(400, "bad_request", "`keys` member must be an array.")
    rows: list[dict[str, Any]] = []
    if keys is not None:
        for key in keys:
            doc = sandbox.store.find(MEDIC, str(key))
            if doc is None or (scope is not None and not scope.allows(doc)):
                rows.append({"key": key, "error": "not_found"})
                continue
            rows.append(_row(doc, include_docs))
    else:
        start, end = _id_bound(params, "startkey"), _id_bound(params, "endkey")
        limit = int(params["limit"]) if params.get("limit", "").isdigit() else None
        if scope is None:  # the id range and the limit in the store's query
            docs = sandbox.store.all(MEDIC, start=start, end=end, limit=limit)
        else:
            visible = (d for d in sandbox.store.all(MEDIC, start=start, end=end) if scope.allows(d))
            docs = itertools.islice(visible, limit)
        rows = [_row(doc, include_docs) for doc in docs]
    total = sandbox.store.count(MEDIC) if scope is None else len(rows)
    return JSONResponse({"total_rows": total, "offset": 0, "rows": rows})


def _id_bound(params: Mapping[str, str], name: str) -> str | None:
    if not params.get(name):
        return None
    value = _couch_json(params[name].encode())
    if not isinstance(value, str):
        raise StoreError(400, "bad_request", f"`{name}` must be a document id (a JSON string)")
    return value


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
    for change in sandbox.store.iter_changes(MEDIC, since):
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
    pending = sandbox.store.count_changes(MEDIC, last_seq) if limit is not None else 0
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
    validate_selector(selector)
    sandbox = state_of(request).sandbox
    skip = _non_negative(body, "skip", 0)
    limit = _non_negative(body, "limit", 25)
    candidates = _find_candidates(sandbox, selector, page=skip + limit)
    matched = (d for d in candidates if matches(d, selector))
    docs = [as_served(d) for d in itertools.islice(matched, skip, skip + limit)]
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


def _non_negative(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StoreError(400, "bad_request", f"`{name}` must be a non-negative integer")
    return value


def _find_candidates(sandbox: Sandbox, selector: dict[str, Any], *, page: int) -> Iterator[Doc]:
    """Docs that may match, in id order: read page by page from the ``form`` or ``type`` index
    when the selector pins that field to strings (equality, ``$eq``, ``$in``), else every doc.
    The caller stops reading once it has enough matches."""
    for field in ("form", "type"):  # form first: the narrower index
        wanted = _pinned_strings(selector.get(field))
        if wanted is None:
            continue
        view_name = views.FIND_INDEXES[field]
        after = ""
        while True:
            ids = sandbox.store.view_ids_after(MEDIC, view_name, list(wanted), after, max(page, 1))
            if not ids:
                return
            yield from sandbox.store.get_many(MEDIC, ids)
            after = ids[-1]
    yield from sandbox.store.all(MEDIC)


def _pinned_strings(condition: Any) -> list[str] | None:
    if isinstance(condition, str):
        return [condition]
    if isinstance(condition, dict):
        if isinstance(condition.get("$eq"), str):
            return [condition["$eq"]]
        values = condition.get("$in")
        if isinstance(values, list) and all(isinstance(v, str) for v in values):
            return list(values)
    return None


@endpoint()
async def view(request: Request) -> Response:
    """``/medic/_design/<ddoc>/_view/<name>``: the CHT views the sandbox keeps (key, keys,
    include_docs, limit, skip); offline users are firewalled as in the CHT."""
    user = require_user(request)
    firewall(request, user)
    name = f"{request.path_params['ddoc']}/{request.path_params['view']}"
    if name not in views.HTTP_VIEWS:
        raise StoreError(404, "not_found", "missing_named_view")
    store = state_of(request).sandbox.store
    params = dict(request.query_params)
    if request.method == "POST":
        body = _couch_json(await read_body(request))
        if isinstance(body, dict):
            params.update({k: json.dumps(v) for k, v in body.items()})
    options = {k: _couch_json(v.encode()) for k, v in params.items() if k in _VIEW_JSON_PARAMS}
    if "keys" in options:
        rows = [row for key in options["keys"] or [] for row in store.view_rows(MEDIC, name, key)]
    elif "key" in params:
        rows = store.view_rows(MEDIC, name, options["key"])
    else:
        rows = store.view_rows(MEDIC, name, all_keys=True)
    total = store.view_count(MEDIC, name)  # CouchDB's total_rows: the whole view, whatever the keys
    skip = _non_negative(options, "skip", 0)
    end = skip + _non_negative(options, "limit", 0) if "limit" in options else None
    rows = rows[skip:end]
    include_docs = options.get("include_docs") is True
    docs = {d["_id"]: d for d in store.get_many(MEDIC, [r.id for r in rows])} if include_docs else {}
    out: list[dict[str, Any]] = []
    for row in rows:
        entry: dict[str, Any] = {"id": row.id, "key": row.key, "value": row.value}
        if include_docs:
            found = docs.get(row.id)
            entry["doc"] = as_served(found) if found is not None else None
        out.append(entry)
    return JSONResponse({"total_rows": total, "offset": skip, "rows": out})


_VIEW_JSON_PARAMS = ("key", "keys", "include_docs", "limit", "skip")


@endpoint()
async def doc_endpoint(request: Request) -> Response:
    doc_id = request.path_params["doc_id"]
    sandbox = state_of(request).sandbox
    if request.method == "GET":
        user = require_user(request)
        doc = sandbox.store.find(MEDIC, doc_id) or _deployed_ddoc(doc_id)
        if doc is None:
            doc = sandbox.store.get(MEDIC, doc_id)  # raises CouchDB's 404 (missing or deleted)
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


def _deployed_ddoc(doc_id: str) -> Doc | None:
    """The CHT's own design docs, as far as clients read them: the deployed version (cht-conf
    falls back to ``_design/medic-client``'s ``deploy_info`` when ``/api/deploy-info`` fails)."""
    if doc_id not in ("_design/medic", "_design/medic-client"):
        return None
    info = {"version": EMULATED_VERSION}
    return {"_id": doc_id, "_rev": "1-sandbox", "deploy_info": info, "build_info": info}


@endpoint()
async def create_doc(request: Request) -> Response:
    """``POST /medic/``: a new doc, its id assigned when it has none (CouchDB's ``POST /db``)."""
    user = _require_editor(request)
    body = _couch_json(await read_body(request))
    if not isinstance(body, dict):
        raise StoreError(400, "bad_request", "Document must be a JSON object")
    sandbox = state_of(request).sandbox
    body.setdefault("_id", new_id())
    scope = _scope(request, user)
    existing = sandbox.store.find(MEDIC, str(body["_id"]))
    if scope is not None and (
        (existing is not None and not scope.allows(existing)) or not _allowed_after(scope, sandbox, body)
    ):
        raise StoreError(403, "forbidden", "Insufficient privileges")
    doc_id, rev = sandbox.store.put(MEDIC, body)
    return JSONResponse({"ok": True, "id": doc_id, "rev": rev}, status_code=201, headers={"ETag": f'"{rev}"'})


@endpoint()
async def couch_catch_all(request: Request) -> Response:
    """Any other CouchDB path: offline users are firewalled; the sandbox serves no more of CouchDB."""
    user = require_user(request)
    firewall(request, user)
    raise StoreError(404, "not_found", "The sandbox does not emulate this CouchDB endpoint")


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


def routes() -> list[Route]:
    return [
        Route("/_session", session, methods=["GET", "POST", "DELETE"]),
        Route("/medic", database_redirect, methods=["GET"]),
        Route("/medic/", database_info, methods=["GET"]),
        Route("/medic/", create_doc, methods=["POST"]),
        Route("/medic/_bulk_docs", bulk_docs, methods=["POST"]),
        Route("/medic/_all_docs", all_docs, methods=["GET", "POST"]),
        Route("/medic/_changes", changes, methods=["GET"]),
        Route("/medic/_find", find, methods=["POST"]),
        Route("/medic/_design/{ddoc}/_view/{view}", view, methods=["GET", "POST"]),
        # a doc id or _design/<name>; other underscore paths fall to the catch-all
        Route("/medic/{doc_id:path}", _doc_or_catch_all, methods=["GET", "PUT", "DELETE"]),
        Route("/medic/{rest:path}", couch_catch_all, methods=["POST"]),
    ]
