"""``/openapi.json`` and ``/docs``: the API described where developers look, behind the API's own
authentication (only ``/health`` is open).

Swagger UI's JavaScript and CSS come from the ``swagger-ui-bundle-v2`` package (Swagger UI 5,
which reads OpenAPI 3.1), served from here: the page works with no internet. FastAPI's default
page loads them from a CDN, which a facility network or an air-gapped server may not reach.
The FHIR server is described by its CapabilityStatement (``/fhir/metadata``), linked from the
page, not repeated here.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from swagger_ui_bundle import swagger_ui_path

from cht_interop import __version__
from cht_interop.fhir.errors import ResourceNotFound
from cht_interop.gateway.auth import require_client
from cht_interop.kit.http import public_base
from cht_interop.ltfu.openapi import add_request_schemas

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
ASSETS = {  # the only files served from the bundle
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
DESCRIPTION = """\
The loss-to-follow-up (LTFU) workflow between FHIR R4 health systems and the Community Health
Toolkit, request- and response-compatible with the reference mediator (`medic/cht-interoperability`).

Every route but `/health/*` needs HTTP Basic as an interop client (`interop-client`; `up` prints
where its password is kept). Errors are FHIR OperationOutcomes.

The FHIR R4 server beside it is described by its CapabilityStatement:
[{base}/fhir/metadata]({base}/fhir/metadata).
"""


def _document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of every route but ``/fhir``'s, built once per app."""
    cached: dict[str, Any] | None = getattr(app.state, "openapi_document", None)
    if cached is not None:
        return cached
    document = get_openapi(
        title="cht-interop",
        version=__version__,
        summary="LTFU interoperability between FHIR R4 health systems and the CHT",
        description=DESCRIPTION,
        routes=app.routes,
    )
    document["paths"] = {p: item for p, item in document["paths"].items() if not p.startswith("/fhir")}
    add_request_schemas(document)
    _drop_fastapi_validation_answers(document)
    _keep_referenced_schemas(document)
    document["components"]["securitySchemes"] = {"interopClient": {"type": "http", "scheme": "basic"}}
    document["security"] = [{"interopClient": []}]
    for path, item in document["paths"].items():
        if path.startswith("/health/"):
            for operation in item.values():
                operation["security"] = []
    app.state.openapi_document = document
    return document


def _drop_fastapi_validation_answers(document: dict[str, Any]) -> None:
    """FastAPI documents a 422 for parameter errors; this app answers those 400 (``app.py``)."""
    for item in document["paths"].values():
        for operation in item.values():
            answer = operation.get("responses", {}).get("422")
            if answer is not None and answer.get("description") == "Validation Error":
                del operation["responses"]["422"]


def _keep_referenced_schemas(document: dict[str, Any]) -> None:
    """Only the component schemas the kept paths reach (``/fhir``'s own are left out)."""
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    prefix = "#/components/schemas/"
    reached: set[str] = set()
    todo = [json.dumps(document["paths"])]
    while todo:
        for name in re.findall(re.escape(prefix) + r'([^"]+)"', todo.pop()):
            if name not in reached and name in schemas:
                reached.add(name)
                todo.append(json.dumps(schemas[name]))
    for name in set(schemas) - reached:
        del schemas[name]


def install_api_docs(app: FastAPI) -> None:
    """Mount ``/openapi.json``, ``/docs`` and its assets, authenticated like the API."""
    router = APIRouter(dependencies=[Depends(require_client)], include_in_schema=False)

    @router.get(OPENAPI_PATH)
    async def openapi_json(request: Request) -> JSONResponse:
        base = public_base(request)
        document = copy.deepcopy(_document(request.app))
        document["info"]["description"] = DESCRIPTION.format(base=base)
        document["servers"] = [{"url": base}]
        return JSONResponse(document)

    @router.get(DOCS_PATH)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{OPENAPI_PATH}",
            title="cht-interop API",
            swagger_js_url=f"{root}{DOCS_PATH}/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_PATH}/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_PATH}/assets/favicon-32x32.png",
            # Swagger UI would otherwise send a public server's document URL to its online validator
            swagger_ui_parameters={"validatorUrl": None},
        )

    @router.get(DOCS_PATH + "/assets/{name}")
    async def swagger_asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise ResourceNotFound(f"no asset {name}")
        return FileResponse(Path(str(swagger_ui_path / name)), media_type=media_type)

    app.include_router(router)
