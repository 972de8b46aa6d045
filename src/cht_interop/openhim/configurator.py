"""``openhim configure``: the client, its role and the channels in OpenHIM core, as a diff first.

What the reference deployment's separate configurator did, under the same names so that an
OpenHIM it set up is updated in place: the client ``interop-client`` (requesting systems and the
CHT's outbound push) with the role ``interop``, and the channels ``Mediator`` and ``FHIR Server``
(``channels.py``) allowing that role. Idempotent: what already matches is left alone, and a second
run changes nothing.

- **Client password**: the interop client's (``INTEROP_CLIENT_PASSWORD``, or the secret ``up``
  keeps), hashed the way core's router checks clients (``src/middleware/basicAuthentication.js``):
  ``hex(sha512(password + salt))``, password first, a random 16-byte hex salt. An existing client
  whose stored hash already proves the password keeps its salt and hash.
- **Role**: client roles are plain strings in ``client.roles`` and ``channel.allow`` on every core
  (core up to 8.5.0 shows them through a virtual ``/roles`` API; later cores keep ``/roles`` for
  user permissions); so the role is made by writing it on both sides, never through ``/roles``.
- **Channels**: written through the channel API (``POST``/``PUT /channels``), which checks them as
  the console does, not installed with ``POST /mediators/:urn/channels`` (a second install answers
  500, and it cannot update a channel). Only the fields we manage are compared and written; an
  administrator's other settings (alerts, auto-retry, ACLs, extra routes) are kept.
- **Users**: none are made. The reference imported a console user with hash fields through
  ``/metadata``, which on core 7.2+ creates no password passport: that user could not log in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cht_interop.openhim.channels import CLIENT_ROLE
from cht_interop.openhim.management import ManagementApi

CLIENT_NAME = "Interoperability Client"
HASH_ALGORITHM = "sha512"
# fields of a stored channel we own (everything else is the administrator's)
CHANNEL_FIELDS = ("description", "urlPattern", "type", "methods", "authType", "status")
ROUTE_FIELDS = (
    "type",
    "status",
    "host",
    "port",
    "secured",
    "primary",
    "forwardAuthHeader",
    "path",
    "pathTransform",
    "username",
    "password",
)
SECRET_FIELDS = frozenset({"password", "passwordHash", "passwordSalt"})
# what core stores when a field is not sent (src/model/channels.js): compared as such
ROUTE_DEFAULTS: dict[str, Any] = {"type": "http", "status": "enabled", "secured": False, "primary": False}
CHANNEL_DEFAULTS: dict[str, Any] = {"type": "http", "authType": "private", "status": "enabled"}


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Change:
    """One object in core and what configure does to it. ``fields`` names what differs (a secret
    by name only); ``document`` is what would be sent."""

    kind: str  # "clients" | "channels"
    name: str
    action: Action
    fields: tuple[str, ...] = ()
    document: dict[str, Any] = field(default_factory=dict)
    object_id: str | None = None


@dataclass(frozen=True)
class Plan:
    core_version: str | None
    changes: list[Change]

    @property
    def changed(self) -> bool:
        return any(c.action is not Action.UNCHANGED for c in self.changes)


def hash_client_password(password: str, salt: str, algorithm: str = HASH_ALGORITHM) -> str:
    """Core's check of a client's Basic password: ``hex(H(password + salt))``."""
    return hashlib.new(algorithm, (password + salt).encode()).hexdigest()


def proves_password(client: dict[str, Any], password: str) -> bool:
    """Whether a stored client's hash fields accept ``password`` (bcrypt-hashed clients, which we
    cannot check without their library, count as not matching and are rehashed)."""
    algorithm, salt, stored = (client.get(k) for k in ("passwordAlgorithm", "passwordSalt", "passwordHash"))
    if not (isinstance(algorithm, str) and isinstance(salt, str) and isinstance(stored, str)):
        return False
    if algorithm not in hashlib.algorithms_available or algorithm.startswith("shake"):
        return False
    return hmac.compare_digest(hash_client_password(password, salt, algorithm), stored)


def plan_client(existing: list[dict[str, Any]], client_id: str, password: str) -> Change:
    current = next((c for c in existing if c.get("clientID") == client_id), None)
    if current is None:
        salt = secrets.token_hex(16)
        document = {
            "clientID": client_id,
            "name": CLIENT_NAME,
            "roles": [CLIENT_ROLE],
            "passwordAlgorithm": HASH_ALGORITHM,
            "passwordSalt": salt,
            "passwordHash": hash_client_password(password, salt),
        }
        return Change("clients", client_id, Action.CREATE, ("roles", "password"), document)
    changed: list[str] = []
    document = _editable(current)
    roles = list(current.get("roles") or [])
    if CLIENT_ROLE not in roles:
        document["roles"] = [*roles, CLIENT_ROLE]
        changed.append("roles")
    if not proves_password(current, password):
        salt = secrets.token_hex(16)
        document.update(
            passwordAlgorithm=HASH_ALGORITHM,
            passwordSalt=salt,
            passwordHash=hash_client_password(password, salt),
        )
        changed.append("password")
    action = Action.UPDATE if changed else Action.UNCHANGED
    return Change("clients", client_id, action, tuple(changed), document, str(current.get("_id") or ""))


def plan_channel(existing: list[dict[str, Any]], wanted: dict[str, Any]) -> Change:
    name = str(wanted["name"])
    current = next((c for c in existing if c.get("name") == name and c.get("status") != "deleted"), None)
    if current is None:
        return Change("channels", name, Action.CREATE, ("routes",), wanted)
    changed = [
        key
        for key in CHANNEL_FIELDS
        if _normal(key, current.get(key, CHANNEL_DEFAULTS.get(key))) != _normal(key, wanted[key])
    ]
    document = _editable(current)
    for key in changed:
        document[key] = wanted[key]
    allow = list(current.get("allow") or [])
    if CLIENT_ROLE not in allow:
        document["allow"] = [*allow, CLIENT_ROLE]
        changed.append("allow")
    routes = [r for r in current.get("routes") or [] if isinstance(r, dict)]
    primary = next((r for r in routes if r.get("primary")), None)
    want_route = wanted["routes"][0]
    route_diff = [
        key
        for key in ROUTE_FIELDS
        if _normal(key, (primary or {}).get(key, ROUTE_DEFAULTS.get(key)))
        != _normal(key, want_route.get(key))
    ]
    if route_diff:
        # our route replaces the primary one (the reference's went to its Node mediator); other
        # routes an administrator added stay, as secondary routes
        kept = [r for r in routes if r is not primary]
        document["routes"] = [{**(primary or {}), **want_route}, *kept]
        changed += [f"route.{key}" for key in route_diff]
    action = Action.UPDATE if changed else Action.UNCHANGED
    return Change("channels", name, action, tuple(changed), document, str(current.get("_id") or ""))


async def make_plan(
    api: ManagementApi, client_id: str, password: str, channel_documents: list[dict[str, Any]]
) -> Plan:
    """Read what core has and compare it with what we want: nothing is written."""
    version = await api.core_version()
    clients, channels = await api.clients(), await api.channels()
    changes = [plan_client(clients, client_id, password)]
    changes += [plan_channel(channels, wanted) for wanted in channel_documents]
    return Plan(version, changes)


async def apply(api: ManagementApi, plan: Plan) -> None:
    """Write the plan's creations and updates, clients first (a channel's ``allow`` names their role)."""
    for change in plan.changes:
        if change.action is Action.CREATE:
            await api.add(change.kind, change.document)
        elif change.action is Action.UPDATE and change.object_id:
            await api.update(change.kind, change.object_id, change.document)


def _editable(document: dict[str, Any]) -> dict[str, Any]:
    """A stored document as a ``PUT`` body: core's own bookkeeping fields left out."""
    return {k: v for k, v in document.items() if k not in ("_id", "__v", "customTokenSet")}


def _normal(key: str, value: Any) -> Any:
    """Equal when core would treat them alike: an unset path is ``""``, methods are a set."""
    if key in ("path", "pathTransform", "username", "password", "description") and value is None:
        return ""
    if key == "methods" and isinstance(value, list):
        return sorted(str(m) for m in value)
    if key == "port" and isinstance(value, str) and value.isdigit():
        return int(value)
    return value
