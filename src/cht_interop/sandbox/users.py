"""``POST /api/v2/users`` (cht-core users.js): users with hashed passwords, user-settings, place, contact."""

from __future__ import annotations

import json
import re
from typing import Any

from cht_interop.gateway.passwords import hash_password
from cht_interop.sandbox import contacts
from cht_interop.sandbox.auth import UserCtx, has_permissions, is_online, user_doc_id
from cht_interop.sandbox.core import Sandbox
from cht_interop.sandbox.errors import ApiError
from cht_interop.sandbox.scope import visible_docs
from cht_interop.sandbox.store import MEDIC, USERS

_USERNAME = re.compile(r"^[a-z0-9_-]+$")
_MIN_PASSWORD = 8
_MIN_SCORE = 50
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


def _utf16_units(text: str) -> list[str]:
    """A JS string's "characters": UTF-16 code units (so one emoji counts as two)."""
    raw = text.encode("utf-16-le", "surrogatepass")
    return [raw[i : i + 2].hex() for i in range(0, len(raw), 2)]


# simple-password-tester's character classes, as JS (non-unicode) regexes read them
_CLASSES = (re.compile(r"[0-9]"), re.compile(r"[a-z]"), re.compile(r"[A-Z]"), re.compile(r"[^A-Za-z0-9_]"))


def password_score(password: str) -> int:
    """simple-password-tester (the CHT's): length + 2 x distinct characters + 15 x (classes - 1).

    Lengths and distinct characters count UTF-16 code units as JS does; the classes are digit,
    lower, upper and ``\\W`` (so ``_`` is in none of them). The CHT requires a score of 50.
    """
    units = _utf16_units(password)
    classes = sum(1 for pattern in _CLASSES if pattern.search(password))
    return len(units) + 2 * len(set(units)) + 15 * (classes - 1)


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
        # a non-string password has no length in JS and scores 0: "too easy to guess"
        if isinstance(password, str) and len(_utf16_units(password)) < _MIN_PASSWORD:
            raise _fail(
                400,
                f"The password must be at least {_MIN_PASSWORD} characters long.",
                "password.length.minimum",
                {"minimum": _MIN_PASSWORD},
            )
        if not isinstance(password, str) or password_score(password) < _MIN_SCORE:
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


# -- CSV (POST /api/v2/users with text/csv) ----------------------------------------------------

_CSV_ROW_SPLIT = re.compile(r',(?=(?:(?:[^"]*"){2})*[^"]*$)')
_IGNORED_STATUSES = ("imported", "skipped")


def _assign_cell(target: dict[str, Any], attribute: str, value: Any) -> None:
    attribute = attribute.strip()
    if not attribute or attribute.lower().find(":excluded") > 0:
        return
    if not isinstance(value, str):
        target[attribute] = value
        return
    cell: Any = re.sub(r'^"|"$', "", value).strip()
    if cell in ("TRUE", "FALSE"):
        cell = cell == "TRUE"
    target[attribute] = cell


def parse_csv(csv: str) -> list[dict[str, Any]]:
    """The CHT's own CSV reading (users.js parseCsv): a header row, dotted headers nest
    (``contact.name``), quotes stripped, ``TRUE``/``FALSE`` as booleans, ``:excluded`` columns
    dropped, rows marked ``imported``/``skipped`` in ``import.status:excluded`` left out."""
    if not csv:
        raise ApiError(500, "Server error")  # "CSV is empty." is a plain Error in the CHT
    rows = re.split(r"\r\n|\n", csv)
    header = rows.pop(0).split(",")
    parsed: list[dict[str, Any]] = []
    for row in (r for r in rows if r):
        user: dict[str, Any] = {}
        ignored = False
        for index, value in enumerate(_CSV_ROW_SPLIT.split(row)):
            name = header[index] if index < len(header) else ""
            if name.lower() == "import.status:excluded" and value.lower() in _IGNORED_STATUSES:
                ignored = True
            if name.lower() == "import.message:excluded":
                continue
            *parents, leaf = name.split(".")
            target = user
            for parent in parents:
                if not isinstance(target.get(parent), dict):
                    _assign_cell(target, parent, {})
                nested = target.get(parent)
                if not isinstance(nested, dict):
                    break
                target = nested
            else:
                _assign_cell(target, leaf, value)
        if not ignored:
            parsed.append(user)
    return parsed


# -- GET /api/v1/users-info --------------------------------------------------------------------

REPLICATION_WARN_LIMIT = 10000  # replication-limit-log.js DOC_IDS_WARN_LIMIT


def _requested_roles(role: str) -> list[str]:
    try:
        roles = json.loads(role)
    except ValueError:
        return [role]
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list):
        raise ApiError(400, "Role parameter must be either a string or a JSON encoded array")
    if not all(isinstance(r, str) for r in roles):
        raise ApiError(400, "All roles should be strings")
    return roles


def replication_info(
    sandbox: Sandbox,
    caller: UserCtx,
    *,
    role: str | None,
    facility_id: str | None,
    contact_id: str | None,
) -> dict[str, Any]:
    """How many docs the caller (offline) or the described offline user would replicate."""
    settings = sandbox.settings()
    subject = caller
    if is_online(settings, caller.roles):
        if not has_permissions(settings, caller, "can_update_users"):
            raise ApiError(403, "Insufficient privileges")
        if not role or not facility_id:
            raise ApiError(400, "Missing required query params: role and/or facility_id")
        roles = _requested_roles(role)
        if is_online(settings, roles):
            raise ApiError(400, "Provided role is not offline")
        subject = UserCtx(name="", roles=roles, facility_id=facility_id, contact_id=contact_id)
    count = len(visible_docs(sandbox, subject))
    return {
        "total_docs": count,
        "warn_docs": count,
        "warn": count >= REPLICATION_WARN_LIMIT,
        "limit": REPLICATION_WARN_LIMIT,
    }
