"""The OpenHIM core double's clients, channels, metadata and ``/about`` (openhim.md §2.2-2.6).

As core answers (``src/api/clients.js``, ``src/api/channels.js``, ``src/api/metadata.js``,
``src/api/about.js``, ``src/model/{clients,channels}.js``), not as our configurator would like:

- ``POST /clients`` 201 ``Client successfully created`` (no id); 400 for a missing clientID or name,
  a duplicate clientID (E11000) or ``roles`` naming the client itself; 409 when the clientID is a
  role name (8.5.0: any ``channel.allow`` / ``client.roles`` entry). ``GET /clients`` hides
  ``customTokenID``. ``PUT /clients/:_id`` 200 ``Successfully updated client.``.
- ``POST /channels`` 201 ``Channel successfully created`` (no id); 400 for no primary route, several,
  ``path`` and ``pathTransform`` both set, a ``pathTransform`` not ``s/../..``, repeated methods, or a
  save error (missing name or urlPattern, a duplicate name). ``PUT /channels/:_id`` 200 ``The
  channel was successfully updated``, the same explicit 400s.
- ``POST /metadata`` upserts Channels and Clients by natural key (channel checks bypassed) and
  records Users; always 201 with a per-item list.
- Router-side: a client's Basic password checked as core does (``hex(H(password + salt))`` for a
  hash algorithm, password first), channels matched (unanchored ``urlPattern``, ``methods``,
  enabled, by priority) and ``pathTransform`` applied sed-like.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

if TYPE_CHECKING:
    from tests.support.openhim_double import OpenHimDouble

SED = re.compile(r"^s/((?:\\/|[^/])*)/((?:\\/|[^/])*)/?(g?)$")


def new_id() -> str:
    return secrets.token_hex(12)  # a Mongo ObjectId's 24 hex digits


def route(core: OpenHimDouble, method: str, parts: list[str], body: Any) -> Response | None:
    """The answer to a management call on these resources, or None if the path is not one."""
    if parts == ["about"] and method == "GET":
        return JSONResponse({"currentCoreVersion": core.version, "serverTimezone": "UTC"})
    if parts == ["clients"]:
        if method == "GET":
            return JSONResponse([public_client(c) for c in core.clients.values()])
        if method == "POST":
            return add_client(core, body)
    if len(parts) == 2 and parts[0] == "clients" and method == "PUT":
        return update_client(core, parts[1], body)
    if parts == ["channels"]:
        if method == "GET":
            return JSONResponse(list(core.channels.values()))
        if method == "POST":
            return add_channel(core, body)
    if len(parts) == 2 and parts[0] == "channels" and method == "PUT":
        return update_channel(core, parts[1], body)
    if parts == ["metadata"] and method == "POST":
        return import_metadata(core, body)
    return None


# -- clients -----------------------------------------------------------------------------------


def public_client(client: dict[str, Any]) -> dict[str, Any]:
    shown = {k: v for k, v in client.items() if k != "customTokenID"}
    if client.get("customTokenID"):
        shown["customTokenSet"] = True
    return shown


def role_names(core: OpenHimDouble) -> set[str]:
    names = {r for c in core.channels.values() for r in c.get("allow") or []}
    return names | {r for c in core.clients.values() for r in c.get("roles") or []}


def client_problem(core: OpenHimDouble, doc: Any, *, creating: bool) -> Response | None:
    if not isinstance(doc, dict) or not doc.get("clientID") or not doc.get("name"):
        return PlainTextResponse("Could not add client via the API: ValidationError", status_code=400)
    if doc["clientID"] in (doc.get("roles") or []):
        return PlainTextResponse("Client roles cannot contain the clientID", status_code=400)
    if creating and doc["clientID"] in core.clients:
        return PlainTextResponse("Could not add client via the API: E11000 duplicate key", status_code=400)
    if creating and doc["clientID"] in role_names(core):
        return PlainTextResponse("A role exists with the same name as the clientID", status_code=409)
    return None


def add_client(core: OpenHimDouble, doc: Any) -> Response:
    problem = client_problem(core, doc, creating=True)
    if problem is not None:
        return problem
    core.clients[doc["clientID"]] = {**doc, "_id": new_id()}
    return PlainTextResponse("Client successfully created", status_code=201)


def update_client(core: OpenHimDouble, object_id: str, doc: Any) -> Response:
    current = next((c for c in core.clients.values() if c["_id"] == object_id), None)
    if current is None:
        return PlainTextResponse(f"Could not find client with ID {object_id}", status_code=404)
    problem = client_problem(core, doc, creating=False)
    if problem is not None:
        return problem
    del core.clients[current["clientID"]]
    core.clients[doc["clientID"]] = {**current, **doc, "_id": object_id}
    return PlainTextResponse("Successfully updated client.", status_code=200)


def client_accepts(client: dict[str, Any], password: str) -> bool:
    """Core's router Basic check for a client (``src/middleware/basicAuthentication.js``)."""
    algorithm, salt, stored = (client.get(k) for k in ("passwordAlgorithm", "passwordSalt", "passwordHash"))
    if not algorithm or not stored:
        return False
    return bool(hashlib.new(str(algorithm), (password + str(salt or "")).encode()).hexdigest() == stored)


# -- channels ----------------------------------------------------------------------------------


def channel_problem(doc: Any) -> str | None:
    """The channel API's own checks (``src/api/channels.js``), before the model's save."""
    if not isinstance(doc, dict):
        return "Could not add channel via the API: ValidationError"
    routes = [r for r in doc.get("routes") or [] if isinstance(r, dict)]
    for r in routes:
        if r.get("path") and r.get("pathTransform"):
            return "Cannot apply both path and pathTransform to the same route"
        if r.get("pathTransform") and not SED.match(str(r["pathTransform"])):
            return "Invalid pathTransform"
    primaries = [r for r in routes if r.get("primary") and r.get("status", "enabled") == "enabled"]
    if doc.get("type", "http") == "http" and not primaries:
        return "Channel must have a primary route"
    if len(primaries) > 1:
        return "Channel cannot have a multiple primary routes"
    methods = doc.get("methods") or []
    if len(set(methods)) != len(methods):
        return "Channel methods can't be repeated"
    if doc.get("priority") is not None and int(doc["priority"]) < 1:
        return "Channel priority cannot be below 1 (= Highest priority)"
    if not doc.get("name") or not doc.get("urlPattern"):
        return "Could not add channel via the API: ValidationError: name and urlPattern are required"
    return None


def stored_channel(doc: dict[str, Any], object_id: str) -> dict[str, Any]:
    """What core keeps: model defaults filled in (``src/model/channels.js``)."""
    routes = [
        {"type": "http", "status": "enabled", "secured": False, "primary": False, **r} for r in doc["routes"]
    ]
    defaults = {"type": "http", "authType": "private", "status": "enabled", "allow": [], "whitelist": []}
    return {**defaults, **doc, "routes": routes, "_id": object_id}


def add_channel(core: OpenHimDouble, doc: Any) -> Response:
    problem = channel_problem(doc)
    if problem is None and doc["name"] in core.channels:
        problem = f"Could not add channel via the API: E11000 duplicate key error: name {doc['name']}"
    if problem is not None:
        return PlainTextResponse(problem, status_code=400)
    core.channels[doc["name"]] = stored_channel(doc, new_id())
    return PlainTextResponse("Channel successfully created", status_code=201)


def update_channel(core: OpenHimDouble, object_id: str, doc: Any) -> Response:
    current = next((c for c in core.channels.values() if c.get("_id") == object_id), None)
    if current is None:
        return PlainTextResponse(f"Could not find channel with ID {object_id}", status_code=404)
    merged = {**current, **(doc if isinstance(doc, dict) else {})}
    problem = channel_problem(merged)
    if problem is not None:
        return PlainTextResponse(problem, status_code=400)
    del core.channels[current["name"]]
    core.channels[merged["name"]] = stored_channel(merged, object_id)
    return PlainTextResponse("The channel was successfully updated", status_code=200)


def match_channel(core: OpenHimDouble, path: str, method: str) -> dict[str, Any] | None:
    """Core's request matching: enabled channels by priority (unprioritised last), the first whose
    unanchored ``urlPattern`` finds the path and whose ``methods`` has the method."""
    candidates = [c for c in core.channels.values() if c.get("status", "enabled") == "enabled"]
    candidates.sort(key=lambda c: (c.get("priority") is None, c.get("priority") or 0))
    for channel in candidates:
        if re.search(str(channel["urlPattern"]), path) and method in (channel.get("methods") or []):
            return channel
    return None


def transform_path(path: str, sed: str | None) -> str:
    """Core's sed-like ``pathTransform`` (``s/from/to[/g]``; ``\\/`` is a slash)."""
    if not sed:
        return path
    found = SED.match(sed)
    if found is None:
        return path
    pattern, replacement, flags = (found.group(i).replace("\\/", "/") for i in (1, 2, 3))
    return re.sub(pattern, replacement, path, count=0 if flags == "g" else 1)


# -- metadata ----------------------------------------------------------------------------------


def import_metadata(core: OpenHimDouble, body: Any) -> Response:
    """``POST /metadata``: upsert by natural key, checks bypassed, always 201 with a result list."""
    results: list[dict[str, Any]] = []
    for model, items in (body if isinstance(body, dict) else {}).items():
        for item in items or []:
            if model == "Channels":
                key, table = item["name"], core.channels
            elif model == "Clients":
                key, table = item["clientID"], core.clients
            elif model == "Users":
                core.imported_users.append(item)
                results.append(
                    {"model": model, "record": item, "status": "Inserted", "uid": item.get("email")}
                )
                continue
            else:
                results.append(
                    {"model": model, "record": item, "status": "Error", "message": "unknown model"}
                )
                continue
            existing = table.get(key)
            document = {**item, "_id": existing["_id"] if existing else new_id()}
            table[key] = stored_channel(document, document["_id"]) if model == "Channels" else document
            status = "Updated" if existing else "Inserted"
            results.append({"model": model, "record": item, "status": status, "uid": key})
    return JSONResponse(results, status_code=201)
