"""``/sandbox/*``: what the real CHT does not have: a user's computed tasks, health, the CHW page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cht_interop.sandbox.chw import chw_routes
from cht_interop.sandbox.errors import ApiError, forbidden
from cht_interop.sandbox.guards import endpoint, require_user, state_of
from cht_interop.sandbox.tasks import compute_tasks, public_task


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


def routes() -> list[Route]:
    return [
        Route("/sandbox/api/tasks", sandbox_tasks, methods=["GET"]),
        Route("/sandbox/health", health, methods=["GET"]),
        *chw_routes(),
    ]
