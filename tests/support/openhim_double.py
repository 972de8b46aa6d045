"""An OpenHIM core test double: the management API's mediator endpoints, as a real HTTP app.

Built from OpenHIM core's contract (``src/api/authentication.js``, ``src/protocols/token.js``,
``src/api/mediators.js``, ``src/model/mediators.js``, ``src/api/heartbeat.js``), not from our
client: it plays one core version's authentication, validates what a mediator sends as core does,
and answers with core's statuses and bodies, quirks included:

- authentication: the legacy token headers on every version (``±10 s`` window on ``auth-ts``, the
  raw header string hashed; any ``auth-*`` header means only the token path is tried), Basic from
  7.1; 401 ``Unauthorized`` otherwise; 403 for a user outside the ``admin`` group;
- ``POST /mediators``: 400 for a missing urn, a non-semver version, bad configDefs or config, and,
  for a new urn, no endpoints or unnamed ones; the same urn again: a greater version replaces the
  document (config values already set are kept), an equal or lower one changes nothing; 201
  ``Created`` both ways;
- ``POST /mediators/:urn/heartbeat``: 404 unknown urn, 400 without ``uptime``; 200 with the config
  only when asked (``config: true``) or changed by ``PUT .../config`` since the last heartbeat, the
  text ``OK`` when asked and none is stored, else an empty body;
- ``POST /mediators/:urn/channels``: names from defaultChannelConfig (``[]``: all); 400 unknown
  name, 500 when the channel exists, 404 unknown urn;
- clients, channels, ``/metadata`` and ``/about``: ``openhim_catalog.py``.

It can be told to answer 503 (``down``) or to answer late (``delay``); to refuse connections, a
test serves it on its port only later.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.support import openhim_catalog as catalog

SEMVER = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
DEF_TYPES = {"string", "bigstring", "bool", "number", "option", "map", "struct", "password"}
PREFIX = "Could not add Mediator via the API: ValidationError: "


def semver_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.split(r"[-+]", version, maxsplit=1)[0].split("."))


def js_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def js_date_parse(value: str) -> datetime | None:
    """Enough of JavaScript's ``Date.parse`` for ISO strings; None where it gives NaN."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class User:
    email: str
    password: str
    salt: str
    admin: bool = True
    token_passport: bool = True  # 7.2+: users created with only a local (bcrypt) password have none

    @property
    def passhash(self) -> str:
        return hashlib.sha512((self.salt + self.password).encode()).hexdigest()


@dataclass
class Seen:
    method: str
    path: str
    scheme: str | None  # "basic" | "token" | None, what the request carried
    status: int
    body: Any = None


@dataclass
class OpenHimDouble:
    """One core. ``version`` decides the authentication types on by default (core's
    ``api.authenticationTypes``): token only before 7.1, Basic and token from 7.1."""

    version: str = "8.5.0"
    users: dict[str, User] = field(default_factory=dict)
    auth_window_seconds: float = 10.0
    down: bool = False  # answer 503 to everything
    delay: float = 0.0  # seconds before answering
    mediators: dict[str, dict[str, Any]] = field(default_factory=dict)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)  # by name
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)  # by clientID
    imported_users: list[dict[str, Any]] = field(default_factory=list)  # Users sent to /metadata
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.users:
            self.add_user("root@openhim.org", "openhim-password", "d9bcb40e-ae65-478f-962e-5e5e5e7d0a01")

    def add_user(self, email: str, password: str, salt: str, **kw: Any) -> User:
        user = User(email, password, salt, **kw)
        self.users[email.lower()] = user
        return user

    @property
    def basic_enabled(self) -> bool:
        return semver_key(self.version) >= (7, 1, 0)

    # -- what tests read ----------------------------------------------------------------------

    def heartbeats(self, urn: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == f"/mediators/{urn}/heartbeat" and s.status == 200]

    def put_config(self, urn: str, config: dict[str, Any]) -> int:
        """``PUT /mediators/:urn/config`` as the console does (validated; sets _configModifiedTS)."""
        with self.lock:
            doc = self.mediators.get(urn)
            if doc is None:
                return 404
            if check_config(doc.get("configDefs", []), config) is not None:
                return 400
            doc["config"] = dict(config)
            doc["_configModifiedTS"] = datetime.now(UTC)
            return 200

    # -- authentication -----------------------------------------------------------------------

    def authenticate(self, request: Request) -> tuple[User | None, str | None]:
        headers = request.headers
        if any(h in headers for h in ("auth-username", "auth-ts", "auth-salt", "auth-token")):
            return self._token(request), "token"
        auth = headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            if not self.basic_enabled:
                return None, "basic"
            try:
                email, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return None, "basic"
            user = self.users.get(email.lower())
            return (user if user and user.password == password else None), "basic"
        return None, None

    def _token(self, request: Request) -> User | None:
        h = request.headers
        email, ts, salt, token = (h.get(k) for k in ("auth-username", "auth-ts", "auth-salt", "auth-token"))
        if not (email and ts and salt and token):
            return None
        user = self.users.get(email.lower())
        if user is None or not user.token_passport:
            return None
        sent = js_date_parse(ts)
        if sent is not None and abs(sent - datetime.now(UTC)) > timedelta(seconds=self.auth_window_seconds):
            return None
        expected = hashlib.sha512((user.passhash + salt + ts).encode()).hexdigest()
        return user if token == expected else None

    # -- the app --------------------------------------------------------------------------------

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.down:
                return PlainTextResponse("Service Unavailable", status_code=503)
            path = unquote(request.url.path)
            raw = await request.body()
            is_json = "application/json" in request.headers.get("content-type", "")
            try:
                body = json.loads(raw) if (raw and is_json) else {}
            except ValueError:
                return PlainTextResponse("Bad Request", status_code=400)
            if path == "/heartbeat" and request.method == "GET":
                return JSONResponse(self._core_heartbeat())
            if path.startswith("/authenticate/") and request.method == "GET":
                return self._salt(path.removeprefix("/authenticate/"))
            user, scheme = self.authenticate(request)
            with self.lock:
                if user is None:
                    response: Response = PlainTextResponse("Unauthorized", status_code=401)
                elif not user.admin:
                    response = PlainTextResponse("Forbidden", status_code=403)
                else:
                    response = self._route(request.method, path, body)
                self.seen.append(Seen(request.method, path, scheme, response.status_code, body))
            return response

        methods = ["GET", "POST", "PUT", "DELETE"]
        return Starlette(routes=[Route("/{path:path}", handle, methods=methods)])

    def _salt(self, email: str) -> Response:
        user = self.users.get(unquote(email).lower())
        if user is None:
            return PlainTextResponse(f"Could not find user by email {email}", status_code=404)
        if not user.token_passport:
            return PlainTextResponse(f"Could not find token passport for user {email}", status_code=404)
        return JSONResponse({"salt": user.salt, "ts": js_iso(datetime.now(UTC))})

    def _core_heartbeat(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        with self.lock:
            mediators = {
                urn: doc.get("_uptime")
                if doc.get("_lastHeartbeat") and now - doc["_lastHeartbeat"] <= timedelta(seconds=60)
                else None
                for urn, doc in self.mediators.items()
            }
        return {"master": 1.0, "mediators": mediators, "now": int(now.timestamp() * 1000)}

    def _route(self, method: str, path: str, body: Any) -> Response:
        parts = path.strip("/").split("/")
        if parts == ["mediators"] and method == "POST":
            return self._register(body)
        if len(parts) == 2 and parts[0] == "mediators" and method == "GET":
            doc = self.mediators.get(parts[1])
            if doc is None:
                return PlainTextResponse("No mediator found for this urn.", status_code=404)
            return JSONResponse(public_doc(doc))
        if len(parts) == 3 and parts[0] == "mediators" and method == "POST" and parts[2] == "heartbeat":
            return self._heartbeat(parts[1], body)
        if len(parts) == 3 and parts[0] == "mediators" and method == "POST" and parts[2] == "channels":
            return self._install(parts[1], body)
        answer = catalog.route(self, method, parts, body)
        return answer if answer is not None else PlainTextResponse("Not Found", status_code=404)

    def _register(self, doc: Any) -> Response:
        if not isinstance(doc, dict) or not doc.get("urn"):
            return PlainTextResponse(PREFIX + "URN is required", status_code=400)
        version = doc.get("version")
        if not isinstance(version, str) or not SEMVER.match(version):
            return PlainTextResponse(
                PREFIX + "Version is required and must be in SemVer form", status_code=400
            )
        problem = check_defs(doc.get("configDefs") or [])
        if problem is None and "config" in doc:
            problem = check_config(doc.get("configDefs") or [], doc["config"])
        if problem is not None:
            return PlainTextResponse(PREFIX + problem, status_code=400)
        existing = self.mediators.get(doc["urn"])
        if existing is not None:
            if semver_key(version) > semver_key(existing["version"]):
                kept = dict(doc.get("config") or {})
                kept.update(existing.get("config") or {})
                replaced = {**doc, "config": kept}
                for internal in ("_lastHeartbeat", "_uptime", "_configModifiedTS"):
                    if internal in existing:
                        replaced[internal] = existing[internal]
                self.mediators[doc["urn"]] = replaced
            return PlainTextResponse("Created", status_code=201)
        if not doc.get("endpoints"):
            return PlainTextResponse(PREFIX + "At least 1 endpoint is required", status_code=400)
        problem = check_document(doc)
        if problem is not None:
            return PlainTextResponse(PREFIX + problem, status_code=400)
        self.mediators[doc["urn"]] = dict(doc)
        return PlainTextResponse("Created", status_code=201)

    def _heartbeat(self, urn: str, body: Any) -> Response:
        doc = self.mediators.get(urn)
        if doc is None:
            return PlainTextResponse("Not Found", status_code=404)
        if not isinstance(body, dict) or "uptime" not in body:
            return PlainTextResponse("Bad Request", status_code=400)
        previous = doc.get("_lastHeartbeat")
        modified = doc.get("_configModifiedTS")
        doc["_lastHeartbeat"] = datetime.now(UTC)
        doc["_uptime"] = body["uptime"]
        send = body.get("config") is True or (
            modified is not None and (previous is None or modified > previous)
        )
        if not send:
            return Response(b"", status_code=200)
        if not doc.get("config"):
            return PlainTextResponse("OK", status_code=200)
        return JSONResponse(doc["config"])

    def _install(self, urn: str, names: Any) -> Response:
        doc = self.mediators.get(urn)
        if doc is None:
            return PlainTextResponse("No mediator found for this urn.", status_code=404)
        if not isinstance(names, list):  # no JSON body: bodyparser's {} installs nothing
            return PlainTextResponse("Created", status_code=201)
        defaults = {c["name"]: c for c in doc.get("defaultChannelConfig") or []}
        wanted = list(defaults) if names == [] else names
        for name in wanted:
            if name not in defaults:
                return PlainTextResponse(f"Channel {name} not found in defaultChannelConfig", status_code=400)
        for name in wanted:
            if name in self.channels:
                return PlainTextResponse("E11000 duplicate key error: name", status_code=500)
            self.channels[name] = catalog.stored_channel(defaults[name], catalog.new_id())
        return PlainTextResponse("Created", status_code=201)


def public_doc(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if not isinstance(v, datetime)}
    for key in ("_lastHeartbeat", "_configModifiedTS"):
        if key in doc:
            out[key] = js_iso(doc[key])
    return out


def check_defs(defs: Any) -> str | None:
    if not isinstance(defs, list):
        return "configDefs must be an array"
    for d in defs:
        if not isinstance(d, dict) or not isinstance(d.get("param"), str) or d.get("type") not in DEF_TYPES:
            return f"Invalid config definition {d!r}"
        if d["type"] == "option" and not (isinstance(d.get("values"), list) and d["values"]):
            return f"Expected values for option param {d['param']}"
        if d["type"] == "struct":
            template = d.get("template")
            if not isinstance(template, list) or not all(
                isinstance(t, dict) and t.get("param") and t.get("type") and t.get("type") != "struct"
                for t in template
            ):
                return f"Invalid template for struct param {d['param']}"
    return None


def _value_ok(kind: str, value: Any, d: dict[str, Any]) -> bool:
    if kind in ("string", "bigstring", "password"):
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "option":
        return value in d.get("values", [])
    if kind == "map":
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    if kind == "struct":
        fields = {t["param"] for t in d.get("template", [])}
        return isinstance(value, dict) and set(value) <= fields
    return False


def check_config(defs: list[dict[str, Any]], config: Any) -> str | None:
    if not isinstance(config, dict):
        return "config must be an object"
    by_param = {d["param"]: d for d in defs}
    for key, value in config.items():
        d = by_param.get(key)
        if d is None:
            return f"No config definition found for parameter {key}"
        values = value if d.get("array") else [value]
        if d.get("array") and not isinstance(value, list):
            return f"Expected config param {key} to be an array of type {d['type']}"
        if not all(_value_ok(d["type"], v, d) for v in values):
            return f"Expected config param {key} to be a {d['type']}"
    return None


def check_document(doc: dict[str, Any]) -> str | None:
    """What mongoose's save checks on a new mediator (``src/model/mediators.js``, channels, routes)."""
    if not isinstance(doc.get("name"), str) or not doc["name"]:
        return "Mediator validation failed: name: Path `name` is required."
    routes = list(doc.get("endpoints") or [])
    for channel in doc.get("defaultChannelConfig") or []:
        if not channel.get("name") or not channel.get("urlPattern"):
            return "Mediator validation failed: defaultChannelConfig: name and urlPattern are required."
        if not set(channel.get("methods") or []) <= {
            "GET",
            "HEAD",
            "POST",
            "PUT",
            "DELETE",
            "CONNECT",
            "OPTIONS",
            "TRACE",
            "PATCH",
        }:
            return "Mediator validation failed: defaultChannelConfig.methods: not a valid enum value."
        routes += channel.get("routes") or []
    for route in routes:
        if not isinstance(route, dict) or not route.get("name"):
            return "Mediator validation failed: endpoints.name: Path `name` is required."
        port = route.get("port")
        if port is not None and (
            not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65536
        ):
            return f"Mediator validation failed: endpoints.port: Cast to Number failed for value {port!r}."
        if route.get("type", "http") not in ("http", "kafka"):
            return "Mediator validation failed: endpoints.type: not a valid enum value."
    return None


# -- routing: what core does with a client's request on a mediator channel (reference §1.6-1.7) --

CORE_ERROR = "An internal server error occurred"
DROPPED_REPLY_HEADERS = {"content-length", "content-encoding", "transfer-encoding"}


def core_status(primary: int, routes: list[int]) -> str:
    """Core's ``setFinalStatus`` when the mediator sends no status (reference §2.7)."""
    if primary >= 500:
        return "Failed"
    if any(s >= 500 for s in routes):
        return "Completed with error(s)"
    if 200 <= primary < 300 and all(200 <= s < 300 for s in routes):
        return "Successful"
    return "Completed"


@dataclass
class OpenHimRouter:
    """Core's HTTP router for one channel with one primary route to a mediator (``forwardAuthHeader``
    on, as the mediator's default channels): forwards the request adding core's headers, reads an
    ``application/json+openhim`` reply as core does, and keeps each transaction as core stores it.
    ``mediator`` is the mediator's ``httpx.AsyncClient`` (its base URL, or an ASGI transport).

    With ``core``, routing follows that core's channels and clients as core's router does
    (``requestMatching.js``, ``authorisation.js``, ``basicAuthentication.js``): the channel matched
    by path and method (404 when none), the client's Basic password checked against its stored
    hash and its roles against the channel's ``allow`` (401 + ``WWW-Authenticate`` otherwise), the
    primary route's ``pathTransform`` applied, the client's ``Authorization`` forwarded only with
    ``forwardAuthHeader`` (the route's own credentials sent otherwise). The request still reaches
    the mediator through ``mediator`` (the route's host and port are recorded, not dialled)."""

    mediator: Any
    route_name: str = "CHT interop"
    client_id: str = "interop-client"
    transactions: list[dict[str, Any]] = field(default_factory=list)
    core: OpenHimDouble | None = None

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            return await self.route(request)

        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return Starlette(routes=[Route("/{path:path}", handle, methods=methods)])

    async def route(self, request: Request) -> Response:
        tx_id = hashlib.sha1(str(len(self.transactions)).encode() + str(id(self)).encode()).hexdigest()[:24]
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        client_ip = request.client.host if request.client else "127.0.0.1"
        forwarded = headers.get("x-forwarded-for")
        headers["X-Forwarded-For"] = f"{forwarded}, {client_ip}" if forwarded else client_ip
        headers["X-Forwarded-Host"] = request.headers.get("host", "")
        headers["X-OpenHIM-TransactionID"] = tx_id
        headers["X-OpenHIM-ClientID"] = self.client_id
        path = request.url.path
        route_name = self.route_name
        if self.core is not None:
            routed = self._through_channel(request, headers)
            if isinstance(routed, Response):
                return routed
            path, route_name = routed
        body = await request.body() if request.method in ("POST", "PUT", "PATCH") else None
        tx: dict[str, Any] = {"_id": tx_id, "request": {"path": request.url.path, "headers": headers}}
        self.transactions.append(tx)
        try:
            reply = await self.mediator.request(
                request.method, path, params=request.url.query, content=body, headers=headers
            )
        except Exception as exc:  # unreachable or timed out: core's handleServerError
            tx.update(status="Failed", error={"message": str(exc), "stack": ""}, autoRetry=True)
            return PlainTextResponse(CORE_ERROR, status_code=500)
        core_entry = {"name": route_name, "request": {"path": path}}
        if "application/json+openhim" not in reply.headers.get("content-type", ""):
            tx.update(status=core_status(reply.status_code, []), orchestrations=[core_entry])
            tx["response"] = {"status": reply.status_code, "body": reply.text}
            return Response(
                reply.content, reply.status_code, headers=self._reply_headers(reply.headers, tx_id)
            )
        try:
            doc = json.loads(reply.content)
            response = doc["response"]
            status = int(response["status"])
        except (ValueError, KeyError, TypeError) as exc:  # a bad envelope: core answers 500
            tx.update(status="Failed", error={"message": str(exc), "stack": ""}, autoRetry=True)
            return PlainTextResponse(CORE_ERROR, status_code=500)
        core_entry["response"] = {"status": reply.status_code, "body": reply.text}
        tx["orchestrations"] = [*doc.get("orchestrations", []), core_entry]
        tx["response"] = response
        tx["status"] = doc.get("status") or core_status(status, [])
        tx["properties"] = doc.get("properties", {})
        if doc.get("error"):
            tx.update(error=doc["error"], autoRetry=True)
        out = Response(str(response.get("body", "")).encode(), status)
        out.headers.update(self._reply_headers(response.get("headers", {}), tx_id))
        return out

    def _through_channel(self, request: Request, headers: dict[str, str]) -> Response | tuple[str, str]:
        """The channel's decision: a refusal, or (the path to send, the route's name); ``headers``
        are set for the upstream as the route says."""
        assert self.core is not None
        channel = catalog.match_channel(self.core, request.url.path, request.method)
        if channel is None:
            return PlainTextResponse("Not Found", status_code=404)
        client = None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            client_id, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            found = self.core.clients.get(client_id)
            client = found if found is not None and catalog.client_accepts(found, password) else None
        allowed = set(channel.get("allow") or [])
        if client is None or not allowed & {client["clientID"], *(client.get("roles") or [])}:
            return PlainTextResponse("Unauthorized", status_code=401, headers={"WWW-Authenticate": "Basic"})
        headers["X-OpenHIM-ClientID"] = client["clientID"]
        primary = next(r for r in channel["routes"] if r.get("primary"))
        if not primary.get("forwardAuthHeader"):
            headers.pop("authorization", None)
            if primary.get("username"):
                credentials = f"{primary['username']}:{primary.get('password', '')}".encode()
                headers["authorization"] = "Basic " + base64.b64encode(credentials).decode()
        path = primary.get("path") or catalog.transform_path(request.url.path, primary.get("pathTransform"))
        return path, str(primary["name"])

    @staticmethod
    def _reply_headers(headers: Any, tx_id: str) -> dict[str, str]:
        kept = {
            str(k): str(v) for k, v in dict(headers).items() if str(k).lower() not in DROPPED_REPLY_HEADERS
        }
        kept["X-OpenHIM-TransactionID"] = tx_id
        return kept
