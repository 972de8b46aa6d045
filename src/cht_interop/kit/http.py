"""HTTP answers in FHIR JSON and the base URLs they link to, for every router (FHIR, mediator)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

FHIR_JSON = "application/fhir+json;charset=utf-8"


def fhir_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = b"" if body is None else orjson.dumps(body)
    return Response(content, status_code=status, media_type=FHIR_JSON, headers=headers)


def public_base(request: Request) -> str:
    """The server root clients reach: PUBLIC_BASE_URL, or the address the request came to."""
    public: str | None = request.app.state.services.settings.public_base_url
    return public or request_base(request)


def fhir_base(request: Request) -> str:
    """The FHIR base (``<root>/fhir``) for fullUrl, Location and links; the mediator's too."""
    return public_base(request) + "/fhir"


_BASES: dict[tuple[Any, ...], str] = {}


def request_base(request: Request) -> str:
    """The request's base URL, remembered per (scheme, Host, server, root path): Starlette builds
    it from the scope each time (~60 µs on every follow-up on the shared box)."""
    scope = request.scope
    key = (scope.get("scheme"), request.headers.get("host"), scope.get("server"), scope.get("root_path", ""))
    base = _BASES.get(key)
    if base is None:
        base = str(request.base_url).rstrip("/")
        if len(_BASES) < 64:  # a handful of names a deployment is reached by; never unbounded
            _BASES[key] = base
    return base
