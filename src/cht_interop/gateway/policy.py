"""Who may call what: the one table of route -> role, read by the gate (``gate.py``) on every request.

A rule is a method and a path pattern (``*`` one path segment, ``**`` any rest); the first rule
that matches decides. A request no rule matches needs ``admin`` (deny by default), so a new route
is closed to clients until a rule here opens it; ``tests/gateway/test_auth_matrix.py`` fails for
a route without an explicit rule.

Roles (``principals.Role``): ``requester`` is a facility's system (registers its Endpoint and
Organization, submits and cancels follow-ups, reads FHIR); ``cht`` is the CHT's outbound push
(patients, encounters, and Practitioners straight to ``/fhir/Practitioner`` as the reference
deployment's app settings do); ``interop`` is the reference's one client that does both, and
writes anything in ``/fhir`` as the reference's OpenHIM channel let it; ``admin`` may do everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cht_interop.gateway.principals import Principal, Role

ANY_CLIENT = None  # any authenticated client, whatever its roles


def _segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.split("/") if s)


def _matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    for i, part in enumerate(pattern):
        if part == "**":
            return True
        if i >= len(path) or (part != "*" and part != path[i]):
            return False
    return len(pattern) == len(path)


@dataclass(frozen=True)
class Rule:
    method: str  # GET (also HEAD), POST, PUT, PATCH, DELETE, or * for any
    pattern: str
    role: Role | None  # ANY_CLIENT: authenticated is enough
    segments: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", _segments(self.pattern))

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and _matches(self.segments, _segments(path))

    def allows(self, principal: Principal) -> bool:
        return self.role is ANY_CLIENT or principal.has(self.role)


POLICY: tuple[Rule, ...] = (
    # the API's own description (and the docs page built on it)
    Rule("GET", "/openapi.json", ANY_CLIENT),
    Rule("GET", "/docs/**", ANY_CLIENT),
    Rule("GET", "/redoc", ANY_CLIENT),
    # Prometheus scrapes with any client's credentials: aggregate counts only, no record's content
    Rule("GET", "/metrics", ANY_CLIENT),
    # the mediator (reference-compatible routes)
    Rule("GET", "/mediator", ANY_CLIENT),  # its liveness answer
    Rule("POST", "/mediator/endpoint", Role.REQUESTER),
    Rule("POST", "/mediator/organization", Role.REQUESTER),
    Rule("POST", "/mediator/service-request", Role.REQUESTER),
    Rule("PUT", "/mediator/service-request/*", Role.REQUESTER),
    Rule("POST", "/mediator/service-request/*/$cancel", Role.REQUESTER),
    Rule("GET", "/mediator/ltfu-lists/*", Role.REQUESTER),
    Rule("POST", "/mediator/patient", Role.CHT),
    Rule("POST", "/mediator/encounter", Role.CHT),
    # FHIR: the capability statement to anyone; reads (searches and $validate write nothing) to
    # requesters; the CHT's Practitioner push; every other write to interop (or admin)
    Rule("GET", "/fhir/metadata", ANY_CLIENT),
    Rule("POST", "/fhir/Practitioner", Role.CHT),
    Rule("GET", "/fhir/**", Role.REQUESTER),
    Rule("POST", "/fhir/*/_search", Role.REQUESTER),
    Rule("POST", "/fhir/*/$validate", Role.REQUESTER),
    Rule("POST", "/fhir/*/*/$validate", Role.REQUESTER),
    Rule("*", "/fhir/**", Role.INTEROP),
)
DEFAULT = Rule("*", "/**", Role.ADMIN)

# answered without a client: liveness and readiness; the console, which has its own session login
OPEN_PREFIXES = ("/health", "/console")


def is_open(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in OPEN_PREFIXES)


def explicit_rule(method: str, path: str) -> Rule | None:
    """The rule for a request, None when only the default (admin) covers it."""
    method = "GET" if method == "HEAD" else method
    segments = _segments(path)
    for rule in POLICY:
        if rule.method in ("*", method) and _matches(rule.segments, segments):
            return rule
    return None


def rule_for(method: str, path: str) -> Rule:
    return explicit_rule(method, path) or DEFAULT
