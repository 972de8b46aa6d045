"""FHIR REST routes under ``/fhir``: parse the HTTP request, call the store, shape the HTTP answer.

Every route (``metadata`` included) requires an authenticated interop client. Errors are raised as
the typed ``cht_interop.fhir.errors`` and rendered as OperationOutcome by the app's handler.
"""

from __future__ import annotations

from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from cht_interop.fhir import patch
from cht_interop.fhir.capability import capability_statement
from cht_interop.fhir.datetimes import from_us
from cht_interop.fhir.errors import (
    InvalidRequest,
    PayloadTooLarge,
    ResourceNotFound,
    TransactionTooLarge,
    UnsupportedMediaType,
)
from cht_interop.fhir.outcomes import Stored, WriteOutcome, outcome_info
from cht_interop.fhir.preconditions import not_modified
from cht_interop.fhir.reads import view
from cht_interop.fhir.registry import RESOURCE_TYPES
from cht_interop.fhir.store import FhirStore
from cht_interop.fhir.summary import summary_mode
from cht_interop.gateway.auth import require_client
from cht_interop.kit.http import fhir_base, fhir_response
from cht_interop.kit.json_body import JsonTooDeep, parse_json_body

JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}
FORM_TYPE = "application/x-www-form-urlencoded"

router = APIRouter(dependencies=[Depends(require_client)], tags=["fhir"])


# ---- helpers --------------------------------------------------------------------------------------


def _store(request: Request) -> FhirStore:
    store: FhirStore | None = request.app.state.services.fhir_store
    if store is None:
        raise ResourceNotFound("The embedded FHIR server is disabled: FHIR_URL points at an external server")
    return store


def _type(name: str) -> str:
    if name not in RESOURCE_TYPES:
        known = ", ".join(sorted(RESOURCE_TYPES))
        raise ResourceNotFound(
            f"HAPI-0302: Unknown resource type '{name}' - Server knows how to handle: [{known}]"
        )
    return name


def _no_operation(method: str, path: str) -> None:
    if "$" in path:
        raise InvalidRequest(
            f"HAPI-0389: Invalid request: The FHIR endpoint on this server does not know how to handle "
            f"{method} operation[{path}] with parameters [[]]"
        )


async def _body(request: Request, allowed: set[str] = JSON_TYPES) -> bytes:
    content_type = request.headers.get("content-type")
    if content_type is not None:
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime not in allowed:
            raise UnsupportedMediaType(
                f'HAPI-0380: Incorrect Content-Type header value of "{content_type}" was provided in the '
                f"request. A FHIR Content-Type is required"
            )
    limit = request.app.state.services.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
    return bytes(body)


async def _json(request: Request) -> Any:
    body = await _body(request)
    if not body.strip():
        raise InvalidRequest("HAPI-0450: Failed to parse request body as JSON resource: the body is empty")
    return await _json_of(body)


async def _optional_json(request: Request) -> Any:
    """The JSON body of a request that may have none (``None``)."""
    if request.method == "GET":
        return None
    body = await _body(request)
    return await _json_of(body) if body.strip() else None


async def _json_of(body: bytes) -> Any:
    try:
        return await parse_json_body(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            "HAPI-0450: Failed to parse request body as JSON resource. Error was: "
            f"HAPI-1861: Failed to parse JSON encoded FHIR content: {exc}"
        ) from None
    except JsonTooDeep as exc:
        raise _too_deep(exc) from None


def _too_deep(exc: JsonTooDeep) -> InvalidRequest:
    return InvalidRequest(
        f"HAPI-0450: Failed to parse request body as JSON resource. Error was: {exc} (the server's limit)"
    )


def _headers(base: str, stored: Stored) -> dict[str, str]:
    return {
        "Location": f"{base}/{stored.location}",
        "ETag": stored.etag,
        "Last-Modified": format_datetime(from_us(stored.last_updated), usegmt=True),
    }


def _prefer(request: Request) -> str:
    for part in request.headers.get("prefer", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "return":
            return value.strip().strip('"')
    return "representation"


def _write_response(request: Request, out: WriteOutcome, message: str) -> Response:
    base = fhir_base(request)
    headers = _headers(base, out.stored)
    prefer = _prefer(request)
    if prefer == "minimal":
        return fhir_response(None, out.status, headers)
    if prefer == "OperationOutcome":
        return fhir_response(outcome_info(message), out.status, headers)
    return fhir_response(out.resource, out.status, headers)


def _read_view(request: Request, resource: dict[str, Any]) -> dict[str, Any]:
    """A read's resource under ``_summary`` / ``_elements`` (HAPI applies both to reads too)."""
    raw_summary = request.query_params.get("_summary")
    summary = summary_mode(raw_summary) if raw_summary else "false"
    raw_elements = request.query_params.getlist("_elements")
    elements = [e.strip() for v in raw_elements for e in v.split(",") if e.strip()]
    return view(resource, summary, elements)


def _params(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


def _match_params(request: Request, verb: str) -> list[tuple[str, str]]:
    """A conditional write's search: HAPI's 400 when ``[type]`` comes with neither id nor search."""
    params = _params(request)
    if not params:
        raise InvalidRequest(
            f"HAPI-0419: Can not {verb} resource, request URL must contain an ID element or a search"
        )
    return params


def _read_response(request: Request, stored: Stored) -> Response:
    """read / vread: the version, or 304 when the request's If-None-Match / If-Modified-Since hold."""
    headers = _headers(fhir_base(request), stored)
    headers.pop("Location")
    inm, ims = request.headers.get("if-none-match"), request.headers.get("if-modified-since")
    if (inm or ims) and not_modified(inm, ims, stored.version_id, stored.last_updated):
        return Response(status_code=304, headers=headers)
    return fhir_response(_read_view(request, stored.resource or {}), 200, headers)


async def _history(request: Request, rtype: str | None, rid: str | None) -> Response:
    store = _store(request)
    return fhir_response(await store.history(rtype, rid, _params(request), base_url=fhir_base(request)))


# ---- routes ---------------------------------------------------------------------------------------


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    """CapabilityStatement of the embedded server."""
    return fhir_response(capability_statement(fhir_base(request)))


@router.get("/_history")
async def history_system(request: Request) -> Response:
    """history-system (before ``/{rtype}``, which would take ``_history`` for a type)."""
    return await _history(request, None, None)


@router.post("/{rtype}/$validate")
@router.get("/{rtype}/$validate")
async def validate_type(request: Request, rtype: str) -> Response:
    """``$validate`` of a resource given in the body (or a Parameters); writes nothing."""
    _type(rtype)
    return fhir_response(await _store(request).validate(rtype, None, await _optional_json(request)))


@router.post("/{rtype}/{rid}/$validate")
@router.get("/{rtype}/{rid}/$validate")
async def validate_instance(request: Request, rtype: str, rid: str) -> Response:
    """``$validate`` against an existing resource (the stored one when no body is given)."""
    _type(rtype)
    return fhir_response(await _store(request).validate(rtype, rid, await _optional_json(request)))


@router.post("")
@router.post("/")
async def batch_or_transaction(request: Request) -> Response:
    """batch / transaction Bundle."""
    bundle = await _json(request)
    _within_transaction_limit(request, bundle)
    result = await _store(request).process_bundle(
        bundle,
        base_url=fhir_base(request),
        return_representation=_prefer(request) == "representation" and "prefer" in request.headers,
    )
    return fhir_response(result)


def _within_transaction_limit(request: Request, bundle: Any) -> None:
    """A transaction longer than ``FHIR_TRANSACTION_MAX_ENTRIES`` is refused before any work: on
    SQLite the whole write holds the one writer that every other client waits for."""
    limit = request.app.state.services.settings.transaction_entry_limit()
    if limit is None or not isinstance(bundle, dict) or bundle.get("type") != "transaction":
        return
    entries = bundle.get("entry")
    if isinstance(entries, list) and len(entries) > limit:
        raise TransactionTooLarge(
            f"This transaction has {len(entries)} entries; this server takes at most {limit} in one "
            f"transaction (FHIR_TRANSACTION_MAX_ENTRIES): split it into smaller transactions."
        )


@router.get("/{rtype}")
@router.get("/{rtype}/")
async def search(request: Request, rtype: str) -> Response:
    """search-type."""
    _no_operation("GET", rtype)
    return fhir_response(
        await _store(request).search(_type(rtype), _params(request), base_url=fhir_base(request))
    )


@router.post("/{rtype}/_search")
async def search_post(request: Request, rtype: str) -> Response:
    """search-type with form-encoded parameters."""
    _type(rtype)
    body = await _body(request, {FORM_TYPE})
    params = _params(request) + parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return fhir_response(await _store(request).search(rtype, params, base_url=fhir_base(request)))


@router.post("/{rtype}")
@router.post("/{rtype}/")
async def create(request: Request, rtype: str) -> Response:
    """create, or conditional create with If-None-Exist."""
    _no_operation("POST", rtype)
    _type(rtype)
    resource = await _json(request)
    out = await _store(request).create(
        resource,
        resource_type=rtype,
        if_none_exist=request.headers.get("if-none-exist"),
        base_url=fhir_base(request),
    )
    verb = "created" if out.created else "matched an existing resource (conditional create)"
    return _write_response(request, out, f"Successfully {verb}: {rtype}/{out.stored.id}")


@router.post("/{rtype}/{rid}")
async def create_with_id(request: Request, rtype: str, rid: str) -> Response:
    _type(rtype)
    _no_operation("POST", f"{rtype}/{rid}")
    raise InvalidRequest(
        f'HAPI-0365: Can not create resource with ID "{rid}", ID must not be supplied on a create (POST) '
        "operation (use an HTTP PUT / update operation if you wish to supply an ID)"
    )


@router.get("/{rtype}/_history")
async def history_type(request: Request, rtype: str) -> Response:
    """history-type (before ``/{rtype}/{rid}``, which would read the id ``_history``)."""
    return await _history(request, _type(rtype), None)


@router.get("/{rtype}/{rid}")
async def read(request: Request, rtype: str, rid: str) -> Response:
    """read, conditional on If-None-Match / If-Modified-Since (304)."""
    _type(rtype)
    _no_operation("GET", f"{rtype}/{rid}")
    return _read_response(request, await _store(request).read(rtype, rid))


@router.get("/{rtype}/{rid}/_history")
async def history_instance(request: Request, rtype: str, rid: str) -> Response:
    """history-instance."""
    return await _history(request, _type(rtype), rid)


@router.get("/{rtype}/{rid}/_history/{vid}")
async def vread(request: Request, rtype: str, rid: str, vid: str) -> Response:
    """vread, conditional like read."""
    _type(rtype)
    return _read_response(request, await _store(request).vread(rtype, rid, vid))


@router.put("/{rtype}/{rid}")
async def update(request: Request, rtype: str, rid: str) -> Response:
    """update (update-as-create for an unknown, non-numeric id)."""
    _type(rtype)
    _no_operation("PUT", f"{rtype}/{rid}")
    resource = await _json(request)
    if not isinstance(resource, dict):
        raise InvalidRequest("HAPI-0450: Failed to parse request body as JSON resource: not a JSON object")
    out = await _store(request).update(
        rtype, rid, resource, if_match=request.headers.get("if-match"), base_url=fhir_base(request)
    )
    verb = "created" if out.created else "updated"
    return _write_response(request, out, f"Successfully {verb} resource: {rtype}/{rid}")


@router.put("/{rtype}")
@router.put("/{rtype}/")
async def conditional_update(request: Request, rtype: str) -> Response:
    """conditional update: ``PUT [type]?params``."""
    _type(rtype)
    params = _match_params(request, "update")
    resource = await _json(request)
    if not isinstance(resource, dict):
        raise InvalidRequest("HAPI-0450: Failed to parse request body as JSON resource: not a JSON object")
    out = await _store(request).conditional_update(rtype, params, resource, base_url=fhir_base(request))
    return _write_response(request, out, f"Successfully updated resource: {rtype}/{out.stored.id}")


async def _patch_document(request: Request) -> patch.Document:
    content_type = request.headers.get("content-type")
    patch.media_type(content_type)  # HAPI's 400 for a content type that is no patch format
    body = await _body(request, set(patch.CONTENT_TYPES))
    try:  # the nesting limit of every body; a parse error is the patch parser's to word
        await parse_json_body(body)
    except orjson.JSONDecodeError:
        pass
    except JsonTooDeep as exc:
        raise _too_deep(exc) from None
    return patch.parse_document(content_type, body)


@router.patch("/{rtype}/{rid}")
async def patch_instance(request: Request, rtype: str, rid: str) -> Response:
    """patch with a JSON Patch or FHIRPath Patch document."""
    _type(rtype)
    _no_operation("PATCH", f"{rtype}/{rid}")
    ops = await _patch_document(request)
    out = await _store(request).patch(
        rtype, rid, ops, if_match=request.headers.get("if-match"), base_url=fhir_base(request)
    )
    return _write_response(request, out, f"Successfully patched resource: {rtype}/{rid}")


@router.patch("/{rtype}")
@router.patch("/{rtype}/")
async def conditional_patch(request: Request, rtype: str) -> Response:
    """conditional patch: ``PATCH [type]?params`` (404 on no match, 412 on several)."""
    _type(rtype)
    params = _match_params(request, "patch")
    ops = await _patch_document(request)
    out = await _store(request).conditional_patch(rtype, params, ops, base_url=fhir_base(request))
    return _write_response(request, out, f"Successfully patched resource: {rtype}/{out.stored.id}")


@router.delete("/{rtype}/{rid}")
async def delete(request: Request, rtype: str, rid: str) -> Response:
    """delete (200 with an OperationOutcome; 409 while other resources refer to it)."""
    _type(rtype)
    out = await _store(request).delete(rtype, rid)
    return fhir_response(outcome_info(out.message))


@router.delete("/{rtype}")
@router.delete("/{rtype}/")
async def conditional_delete(request: Request, rtype: str) -> Response:
    """conditional delete: ``DELETE [type]?params`` (412 on several matches)."""
    _type(rtype)
    params = _params(request)
    if not params:
        raise InvalidRequest(
            "HAPI-0416: Can not delete a whole resource type; give an id or search parameters"
        )
    out = await _store(request).conditional_delete(rtype, params)
    return fhir_response(outcome_info(out.message))
