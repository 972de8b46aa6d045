"""What configuration tools (cht-conf, CHT scripts) call besides the documents: the version, the
settings through the legacy rewrite paths, deprecated transitions, XForm validation, CouchDB's
attachment config; and the JSON 404 the CHT gives for any other ``/api`` path.

Routes and answers follow cht-core ``api/src/routing.js`` and its controllers (``settings.js``,
``forms.js``, ``couch-config.js``, ``services/deploy-info.js``); ``docs/cht-sandbox.md`` lists them.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cht_interop.sandbox.api_routes import put_settings
from cht_interop.sandbox.auth import has_permissions
from cht_interop.sandbox.core import EMULATED_VERSION, settings_at
from cht_interop.sandbox.errors import ApiError
from cht_interop.sandbox.guards import endpoint, firewall, require_user, state_of
from cht_interop.sandbox.http import current_user, media_type, read_body
from cht_interop.sandbox.store import StoreError
from cht_interop.sandbox.xforms import InvalidXForm, validate_xform

# The transitions cht-core's library marks deprecated (shared-libs/transitions), in its order
_DEPRECATED_TRANSITIONS = (
    (
        "generate_patient_id_on_people",
        "3.8.x",
        'Please use "generate_shortcode_on_contacts" transition instead.',
    ),
    ("update_notifications", "3.2.x", 'Please use "muting" transition instead.'),
)
# CouchDB's default [attachments] section, which the CHT serves to DB admins
_COUCH_ATTACHMENTS_CONFIG = {
    "compression_level": "8",
    "compressible_types": "text/*, application/javascript, application/json, application/xml",
}
_XFORM_TYPES = ("text/plain", "application/xml", "text/csv")


@endpoint()
async def deploy_info(request: Request) -> Response:
    """``GET /api/deploy-info``: the version cht-conf checks before choosing how to upload."""
    require_user(request)
    return JSONResponse({"version": EMULATED_VERSION, "sandbox": True})


@endpoint(show_prompt=True)
async def settings_v0(request: Request) -> Response:
    """``GET /medic/_design/medic/_rewrite/app_settings/medic[/path]`` (cht-conf's backup)."""
    require_user(request)
    settings: Any = state_of(request).sandbox.settings()
    path = request.path_params.get("path")
    if path:
        settings = settings_at(settings, path)
    return JSONResponse({"settings": settings, "meta": {}, "schema": {}})


@endpoint(show_prompt=True)
async def deprecated_transitions(request: Request) -> Response:
    require_user(request)
    return JSONResponse(
        [
            {
                "name": name,
                "deprecated": True,
                "deprecatedIn": since,
                "deprecationMessage": f"{name} transition is deprecated since {since}. {advice}",
            }
            for name, since, advice in _DEPRECATED_TRANSITIONS
        ]
    )


@endpoint()
async def validate_form(request: Request) -> Response:
    """``POST /api/v1/forms/validate``: ``{ok: true}`` or ``{error}`` with the status, auth included."""
    state = state_of(request)
    user = current_user(request, state.sandbox, state.session_secret)
    if user is None:
        return JSONResponse({"error": "Not logged in"}, status_code=401)
    if not has_permissions(state.sandbox.settings(), user, "can_configure"):
        return JSONResponse({"error": "Insufficient privileges"}, status_code=403)
    raw = await read_body(request)
    try:
        if media_type(request) not in _XFORM_TYPES:
            raise InvalidXForm("Error transforming xml: the body is not XML (send application/xml)")
        validate_xform(raw.decode("utf-8", errors="replace"))
    except InvalidXForm as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse({"ok": True})


@endpoint()
async def couch_config_attachments(request: Request) -> Response:
    user = require_user(request)
    if not user.is_db_admin:
        raise ApiError(401, "Insufficient privileges")
    return JSONResponse(_COUCH_ATTACHMENTS_CONFIG)


@endpoint()
async def unknown_api_path(request: Request) -> Response:
    """Any other ``/api`` path reaches CouchDB in the CHT, which has no ``api`` database."""
    user = require_user(request)
    firewall(request, user)
    raise StoreError(404, "not_found", "Database does not exist.")


def routes() -> list[Route]:
    """Before ``couch_routes`` (the rewrite paths are under ``/medic``); the ``/api`` catch-all last."""
    rewrite = "/medic/_design/medic/_rewrite"
    return [
        Route("/api/deploy-info", deploy_info, methods=["GET"]),
        Route(f"{rewrite}/app_settings/medic", settings_v0, methods=["GET"]),
        Route(f"{rewrite}/app_settings/medic/{{path:path}}", settings_v0, methods=["GET"]),
        Route(f"{rewrite}/update_settings/medic", put_settings, methods=["PUT"]),
        Route("/api/v1/settings/deprecated-transitions", deprecated_transitions, methods=["GET"]),
        Route("/api/v1/forms/validate", validate_form, methods=["POST"]),
        Route("/api/couch-config-attachments", couch_config_attachments, methods=["GET"]),
        Route("/api/{rest:path}", unknown_api_path),
    ]
