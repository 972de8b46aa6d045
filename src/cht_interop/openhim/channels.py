"""The channels OpenHIM core routes to us (and to the FHIR server in use), built in one place.

Both the mediator's ``defaultChannelConfig`` (offered in the console) and ``openhim configure``
(which writes them through core's channel API) use these documents, under the names the
reference deployment's configurator and mediator gave them (``Mediator``, ``FHIR Server``), so
an OpenHIM set up for the reference is updated in place rather than given a second set.

Fields follow core's channel model (``src/model/channels.js``): ``methods`` is required in practice
(a channel without it never matches since core 7.0.1); exactly one enabled ``primary`` route;
``path`` and ``pathTransform`` never both set; ``allow`` names client roles or client ids.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from cht_interop.settings import Settings

MEDIATOR_CHANNEL = "Mediator"
FHIR_CHANNEL = "FHIR Server"
CLIENT_ROLE = "interop"  # the reference's single client role: requesting systems and the CHT's push
MEDIATOR_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
FHIR_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def mediator_url(settings: Settings) -> str:
    return (settings.openhim_mediator_url or f"http://cht-interop:{settings.port}").rstrip("/")


def route_to(url: str, name: str, *, forward_auth: bool) -> dict[str, Any]:
    """A primary HTTP route to ``url``'s host and port; core keeps the request's path, which is
    rewritten (``pathTransform``) when ``url`` has a base path other than the channel's prefix."""
    parts = urlsplit(url)
    secured = parts.scheme == "https"
    return {
        "name": name,
        "type": "http",
        "status": "enabled",
        "host": parts.hostname or "",
        "port": parts.port or (443 if secured else 80),
        "secured": secured,
        "primary": True,
        "forwardAuthHeader": forward_auth,
    }


def sed_path(prefix: str, base_path: str) -> str:
    """Core's sed-like ``pathTransform`` taking ``prefix`` to ``base_path`` (``''`` when equal);
    ``/`` is escaped as core's parser expects (``s/\\/fhir/\\/hapi\\/fhir/``)."""
    base_path = base_path.rstrip("/")
    if base_path == prefix:
        return ""
    return f"s/{prefix.replace('/', chr(92) + '/')}/{base_path.replace('/', chr(92) + '/')}/"


def _channel(
    name: str, description: str, prefix: str, methods: list[str], route: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "urlPattern": f"^{prefix}/.*$",
        "type": "http",
        "methods": methods,
        "allow": [CLIENT_ROLE],
        "authType": "private",
        "status": "enabled",
        "requestBody": True,
        "responseBody": True,
        "routes": [route],
    }


def mediator_channel(settings: Settings) -> dict[str, Any]:
    """``/mediator/*`` to this service; the client's ``Authorization`` is forwarded, since the
    mediator checks the interop client's credentials itself."""
    route = route_to(mediator_url(settings), "CHT interop", forward_auth=True)
    route["pathTransform"] = ""  # the reference's route stripped /mediator; ours serves it
    return _channel(
        MEDIATOR_CHANNEL, "LTFU follow-ups to the CHT (cht-interop)", "/mediator", MEDIATOR_METHODS, route
    )


def fhir_channel(settings: Settings) -> dict[str, Any]:
    """``/fhir/*`` to the FHIR server in use: this service's embedded one (client credentials
    forwarded), or ``FHIR_URL`` (e.g. HAPI) with ``FHIR_USERNAME``/``FHIR_PASSWORD`` as the route's
    own Basic credentials and the client's header not forwarded."""
    if settings.fhir_url is None:
        route = route_to(mediator_url(settings), "CHT interop FHIR", forward_auth=True)
        route["pathTransform"] = ""
        description = "FHIR R4 server (cht-interop's embedded store)"
    else:
        route = route_to(settings.fhir_url, "FHIR server", forward_auth=False)
        route["pathTransform"] = sed_path("/fhir", urlsplit(settings.fhir_url).path)
        route["username"] = settings.fhir_username or ""
        route["password"] = settings.fhir_password.get_secret_value() if settings.fhir_password else ""
        description = "FHIR R4 server (FHIR_URL)"
    return _channel(FHIR_CHANNEL, description, "/fhir", FHIR_METHODS, route)


def channels(settings: Settings) -> list[dict[str, Any]]:
    """Both channels: ``/mediator/*`` and ``/fhir/*``."""
    return [mediator_channel(settings), fhir_channel(settings)]
