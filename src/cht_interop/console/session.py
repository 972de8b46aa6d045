"""The console's login session: a signed cookie (itsdangerous), its secret kept in the data dir.

The cookie carries who logged in and the CSRF token of their forms; it is signed, not encrypted
(nothing secret is in it), HttpOnly, SameSite=Strict, and Secure whenever the request came over
https. A session ends at logout or after ``CONSOLE_SESSION_HOURS``.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from cht_interop.gateway.principals import Principal, Role

COOKIE = "cht_interop_console"
SECRET_FILE = "console-session.secret"
SALT = "cht-interop.console.session"


def load_or_create_secret(data_dir: Path) -> str:
    """The signing key, generated once (mode 0600) beside the other secrets of the data dir."""
    path = Path(data_dir) / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of the same data dir won the race
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


@dataclass(frozen=True)
class Session:
    """What the cookie holds: the CSRF token always, the principal once logged in."""

    csrf: str
    principal: Principal | None = None
    # the client's password version at login: a password changed since ends the session
    password_version: int | None = None


def is_admin(principal: Principal) -> bool:
    """The console is for clients with the admin role."""
    return principal.has(Role.ADMIN)


class SessionCodec:
    """Signs and reads the session cookie."""

    def __init__(self, secret: str, max_age_seconds: float) -> None:
        self.serializer = URLSafeTimedSerializer(secret, salt=SALT)
        self.max_age = int(max_age_seconds)

    def read(self, request: Request) -> Session | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data: Any = self.serializer.loads(raw, max_age=self.max_age)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
            return None
        principal = None
        if isinstance(data.get("id"), str):
            roles = frozenset(Role(r) for r in data.get("roles", []) if r in Role.__members__.values())
            principal = Principal(data["id"], str(data.get("name") or data["id"]), roles)
        version = data.get("pv")
        return Session(data["csrf"], principal, version if isinstance(version, int) else None)

    def write(self, response: Response, request: Request, session: Session) -> None:
        data: dict[str, Any] = {"csrf": session.csrf}
        if session.principal is not None:
            p = session.principal
            data.update(id=p.client_id, name=p.name, roles=sorted(str(r) for r in p.roles))
            if session.password_version is not None:
                data["pv"] = session.password_version
        response.set_cookie(
            COOKIE,
            self.serializer.dumps(data),
            max_age=self.max_age,
            path="/console",
            httponly=True,
            secure=request.url.scheme == "https",
            samesite="strict",
        )

    @staticmethod
    def clear(response: Response, request: Request) -> None:
        response.delete_cookie(
            COOKIE, path="/console", httponly=True, secure=request.url.scheme == "https", samesite="strict"
        )


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(session: Session | None, sent: object) -> bool:
    return session is not None and isinstance(sent, str) and hmac.compare_digest(session.csrf, sent)
