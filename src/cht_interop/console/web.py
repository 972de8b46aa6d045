"""What every console page uses: templates, security headers, the login session, error pages.

``console/factory.py`` builds the sub-app that ``app.py`` mounts at ``/console``. Every page but
the login form needs a logged-in administrator (:func:`require_admin`); every POST form carries
the session's CSRF token (:func:`checked_form`). Pages are plain HTML and CSS: no script runs, so
the Content-Security-Policy forbids all script.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from jinja2 import pass_context
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cht_interop.console.session import Session, SessionCodec, csrf_matches, is_admin, load_or_create_secret
from cht_interop.db.errors import RETRY_AFTER_SECONDS, is_database_busy
from cht_interop.fhir.errors import FhirError
from cht_interop.gateway.principals import Principal

if TYPE_CHECKING:
    from cht_interop.services import Services

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every console answer (pages, errors, redirects, the stylesheet)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _v in message.get("headers", [])}
                extra = [
                    (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


class NotLoggedIn(Exception):
    """No valid session: the browser is sent to the login form."""


class Refused(Exception):
    """A 4xx shown as a page: not an administrator, a stale form, bad input, nothing there."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def services(request: Request) -> Services:
    """The host app's Services (set by its lifespan): the console reads and acts through them."""
    found: Services = request.app.state.host.state.services
    return found


def codec(request: Request) -> SessionCodec:
    """The session codec, made on first use (the data dir is known once the host has started)."""
    state = request.app.state
    made: SessionCodec | None = getattr(state, "codec", None)
    if made is None:
        settings = services(request).settings
        secret = load_or_create_secret(settings.data_dir)
        made = state.codec = SessionCodec(secret, settings.console_session_hours * 3600)
    return made


def session_of(request: Request) -> Session | None:
    return codec(request).read(request)


async def require_admin(request: Request) -> Principal:
    """FastAPI dependency of every page: a logged-in administrator, or a redirect / 403."""
    session = session_of(request)
    if session is None or session.principal is None:
        raise NotLoggedIn
    principal = session.principal
    directory = services(request).authenticator.directory
    if directory is not None:
        # re-read on every page (one primary-key read): a client removed, demoted or given a new
        # password since the login has no session any more
        stored = await directory.find(principal.client_id)
        if stored is None or stored.password_version != session.password_version:
            raise NotLoggedIn
        principal = stored.info.principal()
    if not is_admin(principal):
        raise Refused(403, "Not an administrator", "This client may not use the console.")
    request.state.session = Session(session.csrf, principal, session.password_version)
    return principal


async def checked_form(request: Request) -> FormData:
    """FastAPI dependency of every POST: the form, once its CSRF token matched the session's."""
    form = await request.form()
    if not csrf_matches(session_of(request), form.get("csrf")):
        raise Refused(
            403,
            "Form refused",
            "This form did not come from your console session (or the session ended). "
            "Reload the page and try again.",
        )
    return form


def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    """A page with what every page shows: who is logged in, the CSRF token, the current section."""
    session: Session | None = getattr(request.state, "session", None) or session_of(request)
    context.setdefault("principal", session.principal if session else None)
    context.setdefault("csrf", session.csrf if session else "")
    return templates.TemplateResponse(request, name, context, status_code=status)


def when(value: datetime | str | None) -> str:
    """A time as an administrator reads it: UTC, to the second."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # no-break spaces: a time is never split over two lines in a narrow column
    return value.astimezone(UTC).strftime("%Y-%m-%d\u00a0%H:%M:%S\u00a0UTC")


def ago(value: datetime | None) -> str:
    """How long ago, roughly (``3 min``, ``2 h``, ``5 d``)."""
    if value is None:
        return "-"
    seconds = (datetime.now(UTC) - (value if value.tzinfo else value.replace(tzinfo=UTC))).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def path_for(request: Request, name: str, /, q: dict[str, Any] | None = None, **path_params: Any) -> str:
    """A route's path with its query (empty values left out): links stay relative to the host the
    browser used, whatever a proxy in front says or omits."""
    path = request.url_for(name, **path_params).path
    query = {k: v for k, v in (q or {}).items() if v not in ("", None)}
    return f"{path}?{urlencode(query)}" if query else path


@pass_context
def href(context: Any, name: str, /, q: dict[str, Any] | None = None, **path_params: Any) -> str:
    return path_for(context["request"], name, q, **path_params)


def pretty(body: object) -> str:
    """A JSON body indented for reading; anything else (text, a body cut short) as it is."""
    text = body if isinstance(body, str) else "" if body is None else str(body)
    if not text.lstrip().startswith(("{", "[")):
        return text
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


templates.env.filters["when"] = when
templates.env.filters["pretty"] = pretty
templates.env.filters["ago"] = ago
templates.env.globals["href"] = href


def add_error_pages(console: FastAPI) -> None:
    @console.exception_handler(NotLoggedIn)
    async def _login(request: Request, _exc: NotLoggedIn) -> Response:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        return RedirectResponse(path_for(request, "login_form", {"next": target}), status_code=303)

    @console.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        return render(request, "error.html", exc.status, title=exc.title, message=exc.message)

    @console.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        parts = [f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()]
        return render(request, "error.html", 400, title="Bad request", message="; ".join(parts))

    @console.exception_handler(FhirError)
    async def _fhir(request: Request, exc: FhirError) -> Response:
        # a 4xx is what the console asked badly (shown as it is); a 5xx is the backend's failure
        status = int(exc.status) if int(exc.status) < 500 else 502
        return render(request, "error.html", status, title="The FHIR backend refused", message=str(exc))

    async def _database(request: Request, exc: Exception) -> Response:
        # a busy database (db/errors.py): nothing was saved, the same form can be sent again
        if not is_database_busy(exc):
            raise exc
        page = render(
            request,
            "error.html",
            503,
            title="The database is busy",
            message="Another writer holds the database; nothing was saved. Try again in a moment.",
        )
        page.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return page

    console.add_exception_handler(DBAPIError, _database)
    console.add_exception_handler(PoolTimeout, _database)

    @console.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        title = "Not found" if exc.status_code == 404 else "Request refused"
        return render(request, "error.html", exc.status_code, title=title, message=str(exc.detail))
