"""Who is calling, and what the CHT lets them do (cht-core api/src/auth.js).

The admin is a CouchDB server admin (``_admin``), configured, not stored; every other user lives
in ``_users`` with a hashed password, as ``/api/v2/users`` creates them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass, field
from typing import Any

from cht_interop.gateway.passwords import verify_password
from cht_interop.sandbox.store import USERS, DocStore

ADMIN_ROLES = ("_admin", "admin")  # 5.2 also treats "admin" as a DB admin
ONLINE_ROLES = ("mm-online", "_admin", "admin", "national_admin")


@dataclass(frozen=True)
class UserCtx:
    name: str
    roles: list[str] = field(default_factory=list)
    facility_id: str | None = None
    contact_id: str | None = None

    @property
    def is_db_admin(self) -> bool:
        return any(r in ADMIN_ROLES for r in self.roles)


def user_doc_id(name: str) -> str:
    return f"org.couchdb.user:{name}"


def parse_basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None


class Authenticator:
    def __init__(self, store: DocStore, admin_username: str, admin_password: str) -> None:
        self._store = store
        self._admin_username = admin_username
        self._admin_password = admin_password

    def check(self, name: str, password: str) -> UserCtx | None:
        if name == self._admin_username:
            ok = hmac.compare_digest(password.encode(), self._admin_password.encode())
            return UserCtx(name=name, roles=["_admin"]) if ok else None
        doc = self._store.find(USERS, user_doc_id(name))
        if doc is None or not verify_password(password, str(doc.get("password_hash", ""))):
            return None
        return ctx_from_user_doc(doc)

    def lookup(self, name: str) -> UserCtx | None:
        """A user by name without a password (sessions already authenticated)."""
        if name == self._admin_username:
            return UserCtx(name=name, roles=["_admin"])
        doc = self._store.find(USERS, user_doc_id(name))
        return None if doc is None else ctx_from_user_doc(doc)


def ctx_from_user_doc(doc: dict[str, Any]) -> UserCtx:
    facility = doc.get("facility_id")
    if isinstance(facility, list):
        facility = facility[0] if facility else None
    return UserCtx(
        name=str(doc["name"]),
        roles=list(doc.get("roles") or []),
        facility_id=facility,
        contact_id=doc.get("contact_id"),
    )


def has_permissions(settings: dict[str, Any], ctx: UserCtx, *permissions: str) -> bool:
    """All ``permissions``; only roles configured in ``app_settings.roles`` count; DB admins pass."""
    if ctx.is_db_admin:
        return True
    configured = settings.get("roles") or {}
    roles = [r for r in ctx.roles if r in configured]
    granted = settings.get("permissions") or {}
    return all(any(r in (granted.get(p) or []) for r in roles) for p in permissions)


def is_online(settings: dict[str, Any], roles: list[str]) -> bool:
    if any(r in ONLINE_ROLES for r in roles):
        return True
    configured = settings.get("roles") or {}
    known = [configured[r] for r in roles if r in configured]
    if not known:
        return False
    return not any(isinstance(r, dict) and r.get("offline") for r in known)
