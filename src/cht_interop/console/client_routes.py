"""Clients: who may call the API and use the console, and the three things an administrator does
to them (add, set a password, remove), through the gateway's ClientDirectory. Hashes never leave
the directory; a refusal (a bad id, a short password, an id taken) is shown with its reason."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from cht_interop.console.web import Refused, checked_form, path_for, render, require_admin, services
from cht_interop.gateway.clients import ClientDirectory, ClientError, UnknownClient, parse_roles
from cht_interop.gateway.principals import Principal, Role

router = APIRouter()
Admin = Annotated[Principal, Depends(require_admin)]
Form = Annotated[FormData, Depends(checked_form)]
NOTICES = {
    "added": "Client {client} added.",
    "password": "Client {client} has a new password: the old one no longer works.",
    "removed": "Client {client} removed: its password no longer works.",
}
ROLE_MEANINGS = {
    Role.INTEROP: "requester and CHT together (the reference's single client)",
    Role.REQUESTER: "registers endpoints and organizations, submits and cancels follow-ups, reads FHIR",
    Role.CHT: "the CHT's outbound push: patients and encounters",
    Role.ADMIN: "this console, and every API call",
}


def _directory(request: Request) -> ClientDirectory:
    found = services(request).authenticator.directory
    if found is None:
        raise Refused(409, "Clients are fixed", "This process checks clients it was given in memory.")
    return found


async def _page(
    request: Request, admin: Principal, status: int = 200, error: str = "", notice: str = "", **form: str
) -> Response:
    listed = await _directory(request).list()
    return render(
        request, "clients.html", status, section="clients", clients=listed, me=admin.client_id,
        roles=ROLE_MEANINGS, error=error, notice=notice, form=form,
    )  # fmt: skip


@router.get("/clients", name="clients")
async def clients(request: Request, admin: Admin, notice: str = "", client: str = "") -> Response:
    shown = NOTICES[notice].format(client=repr(client)) if notice in NOTICES else ""
    return await _page(request, admin, notice=shown)


def _done(request: Request, notice: str, client_id: str) -> Response:
    target = path_for(request, "clients", {"notice": notice, "client": client_id})
    return RedirectResponse(target, status_code=303)


@router.post("/clients", name="add_client")
async def add_client(request: Request, admin: Admin, form: Form) -> Response:
    client_id = str(form.get("client_id") or "").strip()
    name = str(form.get("name") or "").strip()
    password = str(form.get("password") or "")
    try:
        roles = parse_roles(str(r) for r in form.getlist("roles"))
        await _directory(request).add(client_id, roles, password, name or None)
    except ClientError as exc:
        return await _page(
            request, admin, 400, error=f"Client not added: {exc}.", client_id=client_id, name=name
        )
    return _done(request, "added", client_id)


@router.post("/clients/{client_id}/password", name="set_client_password")
async def set_password(request: Request, admin: Admin, client_id: str, form: Form) -> Response:
    try:
        await _directory(request).set_password(client_id, str(form.get("password") or ""))
    except UnknownClient:
        raise Refused(404, "Not found", f"There is no client {client_id!r}.") from None
    except ClientError as exc:
        return await _page(request, admin, 400, error=f"Password of {client_id!r} not changed: {exc}.")
    return _done(request, "password", client_id)


@router.post("/clients/{client_id}/remove", name="remove_client")
async def remove_client(request: Request, admin: Admin, client_id: str, _form: Form) -> Response:
    if client_id == admin.client_id:
        return await _page(
            request, admin, 409,
            error="You cannot remove the client you are logged in as: the console would lock you "
            "out mid-task. Log in as another administrator to remove it.",
        )  # fmt: skip
    try:
        await _directory(request).remove(client_id)
    except UnknownClient:
        raise Refused(404, "Not found", f"There is no client {client_id!r}.") from None
    return _done(request, "removed", client_id)
