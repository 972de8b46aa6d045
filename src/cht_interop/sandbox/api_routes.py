"""``/api/*`` and ``/medic/login``: the CHT API's own endpoints the LTFU workflow touches.

Thin handlers: check content type and permissions in the CHT's order, call the domain module
(contacts, users, records, settings, the credentials vault), answer as the CHT does.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cht_interop.sandbox import contacts, records, users
from cht_interop.sandbox.errors import ApiError, bad_request
from cht_interop.sandbox.guards import (
    endpoint,
    firewall,
    require_exact_json,
    require_permissions,
    require_user,
    state_of,
)
from cht_interop.sandbox.http import (
    SESSION_COOKIE,
    current_user,
    media_type,
    not_logged_in,
    parse_json_body,
    read_body,
    sign_session,
)


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
    """``POST /api/v2/users``: JSON or CSV (one user per row), one user or many."""
    kind = request.headers.get("content-type")
    if kind not in ("application/json", "text/csv"):
        raise bad_request("Content-Type must be one of application/json or text/csv")
    raw = await read_body(request)
    body: Any = parse_json_body(raw) if kind == "application/json" else None
    require_permissions(request, "can_edit", "can_create_users")
    if kind == "text/csv":
        body = users.parse_csv(raw.decode("utf-8", errors="replace"))
    return _create_users(request, body)


@endpoint()
async def post_users_v1(request: Request) -> Response:
    """``POST /api/v1/users`` (cht-conf ``create-users``): the same creation, JSON only."""
    require_exact_json(request)
    body = parse_json_body(await read_body(request))
    require_permissions(request, "can_edit", "can_create_users")
    return _create_users(request, body)


def _create_users(request: Request, body: Any) -> Response:
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
async def users_info(request: Request) -> Response:
    """``GET /api/v1/users-info``: how many docs a (would-be) offline user replicates."""
    user = require_user(request)
    sandbox = state_of(request).sandbox
    params = request.query_params
    return JSONResponse(
        users.replication_info(
            sandbox,
            user,
            role=params.get("role"),
            facility_id=params.get("facility_id"),
            contact_id=params.get("contact_id"),
        )
    )


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
    require_permissions(request, "can_edit", "can_configure")
    sandbox = state_of(request).sandbox
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


def routes() -> list[Route]:
    return [
        Route("/api/v1/people", post_people, methods=["POST"]),
        Route("/api/v1/places", post_places, methods=["POST"]),
        Route("/api/v1/users", post_users_v1, methods=["POST"]),
        Route("/api/v2/users", post_users, methods=["POST"]),
        Route("/api/v1/users-info", users_info, methods=["GET"]),
        Route("/api/v1/records", post_records, methods=["POST"]),
        Route("/api/v2/records", post_records, methods=["POST"]),
        Route("/api/v1/settings", get_settings, methods=["GET"]),
        Route("/api/v1/settings", put_settings, methods=["PUT"]),
        Route("/api/v1/credentials/{key:path}", put_credentials, methods=["PUT"]),
        Route("/medic/login", unauthenticated_login_page, methods=["GET"]),
        Route("/medic/login", medic_login, methods=["POST"]),
    ]
