"""What every sandbox route does around its own work, in the CHT's order: the failed-login rate
limit, authentication, permission and offline-user checks, and errors rendered with the CHT's
envelope (``ApiError``) or CouchDB's (``StoreError``); and ``SandboxState``, what the routes share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cht_interop.sandbox.auth import UserCtx, has_permissions, is_online, parse_basic
from cht_interop.sandbox.core import Sandbox
from cht_interop.sandbox.errors import ApiError, bad_request, forbidden
from cht_interop.sandbox.http import couch_error, current_user, render_error, respond
from cht_interop.sandbox.js import JsError
from cht_interop.sandbox.ratelimit import FailedLoginLimiter
from cht_interop.sandbox.sentinel import Sentinel
from cht_interop.sandbox.store import StoreError
from cht_interop.sandbox.tasks import TaskRulesMissing

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
