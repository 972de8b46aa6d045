"""Login and logout: the client id and password checked by the gateway's authenticator."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from cht_interop.console.session import Session, is_admin, new_csrf
from cht_interop.console.web import checked_form, codec, path_for, render, services, session_of
from cht_interop.gateway.errors import TooManyFailures

router = APIRouter()


def _safe_next(value: object) -> str:
    """Only a console path: never an absolute URL (no open redirect after login)."""
    if isinstance(value, str) and value.startswith("/console/") and not value.startswith("//"):
        return value
    return "/console/"


@router.get("/login", name="login_form")
async def login_form(request: Request, next: str = "/console/") -> Response:
    """The login form; starts an anonymous session so that the form carries a CSRF token."""
    session = session_of(request)
    if session is None:
        session = Session(new_csrf())
    elif session.principal is not None and is_admin(session.principal):
        return RedirectResponse(_safe_next(next), status_code=303)  # logged in already
    response = render(
        request, "login.html", csrf=session.csrf, principal=session.principal, next=_safe_next(next)
    )
    codec(request).write(response, request, session)
    return response


@router.post("/login")
async def login(request: Request, form: Annotated[FormData, Depends(checked_form)]) -> Response:
    client_id = str(form.get("client_id") or "").strip()
    password = str(form.get("password") or "")
    target = _safe_next(form.get("next"))
    session = session_of(request)
    assert session is not None  # checked_form found its CSRF token
    authenticator = services(request).authenticator
    address = request.client.host if request.client else ""
    try:
        principal = await authenticator.login(client_id, password, address)
    except TooManyFailures as exc:
        response = render(
            request, "login.html", 429, csrf=session.csrf, next=target, client_id=client_id,
            error=f"Too many failed logins from your address: wait {exc.retry_after} s and try again.",
        )  # fmt: skip
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if principal is None:
        return render(
            request, "login.html", 401, csrf=session.csrf, next=target, client_id=client_id,
            error="Wrong client id or password.",
        )  # fmt: skip
    if not is_admin(principal):
        return render(
            request, "login.html", 403, csrf=session.csrf, next=target, client_id=client_id,
            error=f"Client {client_id!r} is not an administrator: the console needs the admin role.",
        )  # fmt: skip
    stored = await authenticator.directory.find(client_id) if authenticator.directory else None
    version = stored.password_version if stored is not None else None
    response = RedirectResponse(target, status_code=303)
    codec(request).write(response, request, Session(new_csrf(), principal, version))  # a fresh token
    return response


@router.post("/logout")
async def logout(request: Request, _form: Annotated[FormData, Depends(checked_form)]) -> Response:
    response = RedirectResponse(path_for(request, "login_form"), status_code=303)
    codec(request).clear(response, request)
    return response
