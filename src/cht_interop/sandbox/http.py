"""HTTP helpers with the CHT API's rules: content negotiation, error envelope, authentication.

``server-utils.js`` semantics: JSON only when the client prefers ``application/json`` over text
(absent ``Accept`` or ``*/*`` ⇒ text); 4xx as ``{code, error, details}``; ≥500 as "Server error";
401 as JSON, a 302 to the login page for clients with a User-Agent, or a Basic prompt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from cht_interop.sandbox.auth import UserCtx, parse_basic
from cht_interop.sandbox.core import Sandbox
from cht_interop.sandbox.errors import ApiError
from cht_interop.sandbox.store import StoreError

BASIC_REALM = 'Basic realm="Medic Web Services"'
SESSION_COOKIE = "AuthSession"
SESSION_TTL_SECONDS = 12 * 3600
MAX_BODY = 32 * 1024 * 1024


def _accept_entries(header: str) -> list[tuple[str, float, int]]:
    out = []
    for index, part in enumerate(header.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        if not pieces[0]:
            continue
        q = 1.0
        for param in pieces[1:]:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        out.append((pieces[0].lower(), q, index))
    return out


def _best(entries: list[tuple[str, float, int]], mime: str) -> tuple[float, int, int] | None:
    kind = mime.split("/")[0]
    best: tuple[float, int, int] | None = None
    for name, q, index in entries:
        specificity = 2 if name == mime else 1 if name == f"{kind}/*" else 0 if name == "*/*" else -1
        if specificity < 0:
            continue
        candidate = (q, specificity, -index)
        if best is None or candidate[1] > best[1]:
            best = candidate
    return best


def wants_json(request: Request) -> bool:
    """Express ``req.accepts(['text', 'json']) === 'json'``."""
    header = request.headers.get("accept")
    if not header:
        return False
    entries = _accept_entries(header)
    text = _best(entries, "text/plain")
    js = _best(entries, "application/json")
    if js is None or js[0] <= 0:
        return False
    if text is None or text[0] <= 0:
        return True
    # higher quality wins, then the more specific match, then the earlier entry; ties go to text
    return (js[0], js[1], js[2]) > (text[0], text[1], text[2])


def respond(request: Request, status: int, message: Any, details: Any = None) -> Response:
    if wants_json(request):
        body: dict[str, Any] = {"code": status, "error": message}
        if details is not None:
            body["details"] = details
        return JSONResponse(body, status_code=status)
    if isinstance(message, dict) and "message" in message:
        message = message["message"]
    if not isinstance(message, str):
        message = json.dumps(message)
    if details is not None:
        message += ": " + json.dumps(details)
    return PlainTextResponse(message, status_code=status)


def prompt_for_basic() -> Response:
    return PlainTextResponse(
        "not logged in",
        status_code=401,
        headers={"WWW-Authenticate": BASIC_REALM, "logout-authorization": "CHT-Core API"},
    )


def not_logged_in(request: Request, *, show_prompt: bool = False) -> Response:
    if show_prompt:
        return prompt_for_basic()
    if wants_json(request):
        response: Response = JSONResponse({"code": 401, "error": "unauthorized"}, status_code=401)
    elif request.headers.get("user-agent"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/medic/login?redirect={quote(target, safe='')}", status_code=302)
    else:
        return prompt_for_basic()
    response.headers["logout-authorization"] = "CHT-Core API"
    return response


def render_error(request: Request, exc: ApiError, *, show_prompt: bool = False) -> Response:
    if exc.status == 401:
        return not_logged_in(request, show_prompt=show_prompt)
    if exc.status == 413:
        return respond(request, 413, "Payload Too Large")
    if exc.status >= 500:
        return respond(request, 500, "Server error", exc.details)
    return respond(request, exc.status, exc.message, exc.details)


def couch_error(exc: StoreError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status)


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, "Payload Too Large")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "Payload Too Large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_body(raw: bytes) -> Any:
    """body-parser: malformed JSON reaches the global handler, which answers a bare 500."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(500, "Server error") from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


# -- sessions (cookie alternative to Basic auth, used by the CHW page) -----------------------


def sign_session(secret: bytes, name: str, ttl_seconds: int = SESSION_TTL_SECONDS) -> str:
    """An ``AuthSession`` value: unpadded base64url, as CouchDB's (clients split cookies on ``=``)."""
    payload = f"{name}:{int(time.time()) + ttl_seconds}"
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()
    return base64.urlsafe_b64encode(f"{payload}:{mac}".encode()).decode().rstrip("=")


def verify_session(secret: bytes, token: str) -> str | None:
    try:
        padded = token + "=" * (-len(token) % 4)
        name, expires, mac = base64.urlsafe_b64decode(padded.encode()).decode().rsplit(":", 2)
    except (ValueError, UnicodeDecodeError):
        return None
    expected = hmac.new(secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, expected) or not expires.isdigit() or int(expires) < time.time():
        return None
    return name


def session_cookie_header(token: str, ttl_seconds: int = SESSION_TTL_SECONDS) -> str:
    """CouchDB's ``Set-Cookie`` for a session, attribute names capitalised as CouchDB writes them
    (PouchDB's session plugin reads ``Expires`` by that exact name)."""
    expires = formatdate(time.time() + ttl_seconds, usegmt=True)
    return f"{SESSION_COOKIE}={token}; Version=1; Expires={expires}; Max-Age={ttl_seconds}; Path=/; HttpOnly"


def current_user(request: Request, sandbox: Sandbox, session_secret: bytes) -> UserCtx | None:
    header = request.headers.get("authorization")
    if header:
        creds = parse_basic(header)
        return sandbox.auth.check(*creds) if creds else None
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        name = verify_session(session_secret, token)
        return sandbox.auth.lookup(name) if name else None
    return None
