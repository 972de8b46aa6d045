"""``/sandbox/chw``: a CHW logs in, sees open follow-up tasks, fills in the follow-up, submits.

Server-rendered (Jinja2); the session is a signed ``AuthSession`` cookie (HttpOnly, SameSite=Lax)
and every form post carries a per-user CSRF token. Basic auth works too.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from cht_interop.sandbox.auth import UserCtx
from cht_interop.sandbox.followup import METHODS, OUTCOMES, InvalidAnswer, build_report, submit_report
from cht_interop.sandbox.guards import state_of
from cht_interop.sandbox.http import SESSION_COOKIE, current_user, sign_session
from cht_interop.sandbox.tasks import TaskRulesMissing, compute_tasks

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
OPEN_STATES = ("Draft", "Ready")


def _render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(name).render(**context), status_code=status)


def _csrf(secret: bytes, user: UserCtx) -> str:
    return hmac.new(secret, f"csrf:{user.name}".encode(), hashlib.sha256).hexdigest()


def _user(request: Request) -> UserCtx | None:
    state = state_of(request)
    user: UserCtx | None = current_user(request, state.sandbox, state.session_secret)
    return user


def _open_tasks(request: Request, user: UserCtx) -> list[dict[str, Any]]:
    sandbox = state_of(request).sandbox
    try:
        docs = compute_tasks(sandbox, user)
    except TaskRulesMissing:
        return []
    out = []
    for doc in docs:
        if doc["state"] not in OPEN_STATES:
            continue
        emission = doc["emission"]
        patient = sandbox.get_medic(emission["forId"]) or {}
        record = sandbox.get_medic(emission["reportId"]) if emission.get("reportId") else None
        out.append(
            {
                "id": doc["_id"],
                "state": doc["state"],
                "title": sandbox.translate(str(emission.get("title") or emission.get("taskName"))),
                "patient": patient.get("name") or emission["forId"],
                "due": emission["dueDate"],
                "reason": ((record or {}).get("fields") or {}).get("reason"),
                "doc": doc,
            }
        )
    return out


async def chw_home(request: Request) -> Response:
    user = _user(request)
    if user is None:
        return _render("chw_login.html", user=None)
    secret = state_of(request).session_secret
    return _render(
        "chw_tasks.html",
        user=user.name,
        csrf=_csrf(secret, user),
        tasks=_open_tasks(request, user),
        done=request.query_params.get("done"),
    )


async def chw_login(request: Request) -> Response:
    form = await request.form()
    username = str(form.get("username") or "")
    password = str(form.get("password") or "")
    state = state_of(request)
    ip = request.client.host if request.client else None
    keys = state.limiter.keys(ip, username or None, password or None)
    if state.limiter.exhausted(keys):
        state.limiter.consume(keys)
        return _render("chw_login.html", status=429, user=None, error="Too many attempts; wait a moment.")
    user = state.sandbox.auth.check(username, password)
    if user is None:
        state.limiter.consume(keys)
        return _render(
            "chw_login.html",
            status=401,
            user=None,
            error="Incorrect user name or password.",
            username=username,
        )
    response = RedirectResponse("/sandbox/chw", status_code=303)
    response.set_cookie(
        SESSION_COOKIE, sign_session(state.session_secret, user.name), httponly=True, samesite="lax", path="/"
    )
    return response


async def chw_logout(request: Request) -> Response:
    user = _user(request)
    form = await request.form()
    if user is not None and not hmac.compare_digest(
        str(form.get("csrf") or ""), _csrf(state_of(request).session_secret, user)
    ):
        return RedirectResponse("/sandbox/chw", status_code=303)  # a cross-site post cannot log anyone out
    response = RedirectResponse("/sandbox/chw", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def chw_task(request: Request) -> Response:
    user = _user(request)
    if user is None:
        return RedirectResponse("/sandbox/chw", status_code=303)
    task_id = request.path_params["task_id"]
    task = next((t for t in _open_tasks(request, user) if t["id"] == task_id), None)
    if task is None:
        return _render(
            "chw_tasks.html",
            status=404,
            user=user.name,
            csrf=_csrf(state_of(request).session_secret, user),
            tasks=[],
            done=None,
        )
    secret = state_of(request).session_secret
    form_context: dict[str, Any] = {
        "user": user.name,
        "csrf": _csrf(secret, user),
        "task_id": task_id,
        "patient": task["patient"],
        "outcomes": OUTCOMES,
        "methods": METHODS,
    }
    if request.method == "GET":
        return _render("chw_form.html", **form_context)
    form = await request.form()
    if not hmac.compare_digest(str(form.get("csrf") or ""), form_context["csrf"]):
        return _render(
            "chw_form.html", status=403, error="The form expired; please try again.", **form_context
        )
    outcome, method, notes = (str(form.get(k) or "") for k in ("outcome", "method", "notes"))
    sandbox = state_of(request).sandbox
    try:
        report = build_report(sandbox, user, task["doc"], outcome=outcome, method=method, notes=notes)
    except InvalidAnswer as exc:
        return _render(
            "chw_form.html",
            status=400,
            error=str(exc),
            outcome=outcome,
            method=method,
            notes=notes,
            **form_context,
        )
    report_id = submit_report(sandbox, report)
    return RedirectResponse(f"/sandbox/chw?done={quote(report_id)}", status_code=303)


def chw_routes() -> list[Route]:
    return [
        Route("/sandbox/chw", chw_home, methods=["GET"]),
        Route("/sandbox/chw/login", chw_login, methods=["POST"]),
        Route("/sandbox/chw/logout", chw_logout, methods=["POST"]),
        Route("/sandbox/chw/tasks/{task_id:path}", chw_task, methods=["GET", "POST"]),
    ]
