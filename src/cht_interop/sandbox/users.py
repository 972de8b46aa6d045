"""``POST /api/v2/users`` (cht-core users.js): users with hashed passwords, user-settings, place, contact."""

from __future__ import annotations

import re
from typing import Any

from cht_interop.gateway.passwords import hash_password
from cht_interop.sandbox import contacts
from cht_interop.sandbox.auth import is_online, user_doc_id
from cht_interop.sandbox.core import Sandbox
from cht_interop.sandbox.errors import ApiError
from cht_interop.sandbox.store import MEDIC, USERS

_USERNAME = re.compile(r"^[a-z0-9_-]+$")
_MIN_PASSWORD = 8
_LEGACY_TYPES = {
    "national-manager": ["national_admin", "mm-online"],
    "district-manager": ["district_admin", "mm-online"],
    "facility-manager": ["district_admin", "mm-online"],
    "data-entry": ["data_entry"],
    "analytics": ["analytics"],
    "gateway": ["gateway"],
}


def _fail(status: int, message: str, key: str, params: dict[str, Any] | None = None) -> ApiError:
    return ApiError(status, {"message": message, "translationKey": key, "translationParams": params or {}})


def password_score(password: str) -> int:
    """Strength in the spirit of simple-password-tester: length plus character variety, 0-100."""
    classes = sum(bool(re.search(p, password)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^a-zA-Z0-9]"))
    distinct = len(set(password))
    score = min(len(password), 20) * 3 + classes * 10 + min(distinct, 10) * 2 - 40
    if re.fullmatch(r"(.)\1*", password) or password.lower() in ("password", "password1", "12345678"):
        score = 0
    return max(0, min(100, score))


def _roles(data: dict[str, Any]) -> list[str] | None:
    roles = data.get("roles")
    if isinstance(roles, list) and roles:
        return [str(r) for r in roles]
    kind = data.get("type")
    if isinstance(kind, str) and kind:
        return list(_LEGACY_TYPES.get(kind, [kind]))
    return None


def create_user(sandbox: Sandbox, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _fail(400, "Body must be an object", "error.body.object")
    settings = sandbox.settings()
    roles = _roles(data)
    offline = roles is not None and not is_online(settings, roles)
    required = ["username", "password", "type or roles"]
    if offline:
        required += ["place", "contact"]
    missing = []
    for name in required:
        if name == "type or roles":
            if roles is None:
                missing.append(name)
        elif name == "password":
            if not data.get("password") and not data.get("token_login") and not data.get("oidc_username"):
                missing.append(name)
        elif not data.get(name):
            missing.append(name)
    if missing:
        raise _fail(
            400,
            f"Missing required fields: {', '.join(missing)}",
            "field is required",
            {"field": ", ".join(missing)},
        )
    assert roles is not None
    username = str(data["username"])
    if not _USERNAME.match(username):
        raise _fail(
            400,
            "Invalid user name. Valid characters are lower case letters, numbers, underscore (_), "
            "and hyphen (-).",
            "username.invalid",
        )
    password = data.get("password")
    if password is not None:
        password = str(password)
        if len(password) < _MIN_PASSWORD:
            raise _fail(
                400,
                f"The password must be at least {_MIN_PASSWORD} characters long.",
                "password.length.minimum",
                {"minimum": _MIN_PASSWORD},
            )
        if password_score(password) < 50:
            raise _fail(
                400,
                "The password is too easy to guess. Include a range of types of characters to increase "
                "the score.",
                "password.weak",
            )
    doc_id = user_doc_id(username)
    if sandbox.store.find(USERS, doc_id) is not None or sandbox.store.find(MEDIC, doc_id) is not None:
        raise _fail(400, f'Username "{username}" already taken.', "username.taken", {"username": username})
    if username == sandbox.config.admin_username:
        raise _fail(400, f'Username "{username}" already taken.', "username.taken", {"username": username})

    # place and contact (validated before anything is written)
    place: dict[str, Any] | None = None
    place_created = False
    if data.get("place"):
        if isinstance(data["place"], str):
            place = contacts.get_place(sandbox, data["place"])
        else:
            place = contacts.get_or_create_place(sandbox, data["place"])
            place_created = True
    contact: dict[str, Any] | None = None
    if data.get("contact"):
        raw = data["contact"]
        if isinstance(raw, str):
            existing = sandbox.get_medic(raw)
            if existing is not None and not contacts.is_person(sandbox, existing):
                raise _fail(400, "Wrong type, contact is not a person.", "configuration.user.contact.type")
        if isinstance(raw, dict) and "_rev" not in raw and place is not None:
            raw = {**raw, "place": place["_id"]}
        contact = contacts.get_or_create_person(sandbox, raw)
        if place is not None and place["_id"] not in [contact["_id"], *sandbox.lineage_ids(contact)]:
            raise _fail(400, "Contact is not within place.", "configuration.user.place.contact")
    if place is not None and contact is not None and place_created:
        stored = sandbox.store.get(MEDIC, place["_id"])
        stored["contact"] = contacts.minify(contact)
        sandbox.store.put(MEDIC, stored)

    if not is_online(settings, roles):
        roles = [r for r in roles if r != "mm-online"]
    elif "mm-online" not in roles:
        roles = [*roles, "mm-online"]
    common = {
        "name": username,
        "roles": roles,
        "facility_id": place["_id"] if place else None,
        "contact_id": contact["_id"] if contact else None,
    }
    user_doc: dict[str, Any] = {"_id": doc_id, "type": "user", **common}
    if password is not None:
        user_doc["password_hash"] = hash_password(password)
    for optional in ("token_login", "oidc_username"):
        if data.get(optional):
            user_doc[optional] = data[optional]
    settings_doc: dict[str, Any] = {
        "_id": doc_id,
        "type": "user-settings",
        "known": bool(data.get("known")),
        **common,
    }
    for optional in ("phone", "fullname", "email", "language"):
        if data.get(optional):
            settings_doc[optional] = data[optional]
    user_id, user_rev = sandbox.store.put(USERS, user_doc)
    settings_id, settings_rev = sandbox.store.put(MEDIC, settings_doc)
    response: dict[str, Any] = {
        "user": {"id": user_id, "rev": user_rev},
        "user-settings": {"id": settings_id, "rev": settings_rev},
    }
    if contact is not None:
        response["contact"] = {"id": contact["_id"], "rev": contact["_rev"]}
    return response
