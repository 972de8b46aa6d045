"""PATCH (FHIR R4 http.html#patch, as HAPI serves it): JSON Patch (RFC 6902) documents, from a
REST body (``application/json-patch+json``) or a Bundle entry's ``Binary``, and FHIRPath Patch
``Parameters`` (REST body ``application/fhir+json``, or the entry's resource), applied to the
current version of a resource and written as an update on the caller's :class:`WriteSession`.

HAPI's JPA server (``BaseHapiFhirResourceDao.patchInTransaction``): read the current version, check
the requested version (``If-Match``: HAPI-0974 as a 409), refuse a deleted resource (410), apply the
patch (``JsonPatchUtils.apply``: any failure is a 400, HAPI-1272 or HAPI-1271), then run
an ordinary update, so the result is validated like one and a patch that changes nothing writes no
version. FHIRPath Patch (a ``Parameters`` body, ``application/fhir+json``) is applied by
``fhirpath_patch`` on simple paths. The conditional form finds its target in ``conditional``.
"""

from __future__ import annotations

import base64
import binascii
import copy
from typing import Any

import jsonpatch
import jsonpointer
import orjson

from cht_interop.fhir import fhirpath_patch
from cht_interop.fhir.datetimes import format_instant
from cht_interop.fhir.errors import InvalidRequest, ResourceGone, ResourceNotFound, VersionConflict
from cht_interop.fhir.outcomes import Resource, WriteOutcome, parse_etag
from cht_interop.fhir.session import WriteSession

JSON_PATCH = "application/json-patch+json"
FHIR_JSON_TYPES = frozenset({"application/fhir+json", "application/json+fhir"})
CONTENT_TYPES = frozenset({JSON_PATCH, *FHIR_JSON_TYPES})

JsonPatch = list[dict[str, Any]]
Document = JsonPatch | tuple[fhirpath_patch.Operation, ...]
"""A patch: JSON Patch operations (a list) or FHIRPath Patch operations (a tuple)."""


def media_type(content_type: str | None) -> str:
    """The patch format a ``Content-Type`` names (HAPI ``PatchTypeEnum``: 400 HAPI-1965 otherwise)."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime not in CONTENT_TYPES:
        raise InvalidRequest(f"HAPI-1965: Invalid Content-Type for PATCH operation: {content_type or ''}")
    return mime


def parse_document(content_type: str | None, body: bytes) -> Document:
    """A REST PATCH body: JSON Patch, or FHIRPath Patch (a ``Parameters`` resource)."""
    if media_type(content_type) == JSON_PATCH:
        return operations(body)
    try:
        parameters = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            "HAPI-0450: Failed to parse request body as JSON resource. Error was: "
            f"HAPI-1861: Failed to parse JSON encoded FHIR content: {exc}"
        ) from None
    return tuple(fhirpath_patch.parse(parameters))


def operations(raw: bytes | str | Any) -> JsonPatch:
    """Validate a JSON Patch document (bytes / text, or already parsed): an array of operation
    objects, each with a known ``op`` and a string ``path``."""
    if isinstance(raw, bytes | str):
        if not raw.strip():
            raise InvalidRequest("HAPI-1272: Failed to parse JSON Patch: the patch document is empty")
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"HAPI-1272: Failed to parse JSON Patch: {exc}") from None
    if not isinstance(raw, list):
        raise InvalidRequest("HAPI-1272: Failed to parse JSON Patch: the document must be a JSON array")
    for n, op in enumerate(raw):
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise InvalidRequest(f"HAPI-1272: Failed to parse JSON Patch: operation {n} has no 'path'")
        if not isinstance(op.get("op"), str) or op["op"] not in {
            "add",
            "remove",
            "replace",
            "move",
            "copy",
            "test",
        }:
            raise InvalidRequest(f"HAPI-1272: Failed to parse JSON Patch: operation {n} has an invalid 'op'")
        if op["op"] in {"add", "replace", "test"} and "value" not in op:
            raise InvalidRequest(f"HAPI-1272: Failed to parse JSON Patch: operation {n} has no 'value'")
        if op["op"] in {"move", "copy"} and not isinstance(op.get("from"), str):
            raise InvalidRequest(f"HAPI-1272: Failed to parse JSON Patch: operation {n} has no 'from'")
    return raw


def from_entry(resource: Any) -> Document:
    """The patch a Bundle entry carries: a ``Parameters`` resource (FHIRPath Patch) or a
    ``Binary`` with ``contentType`` JSON Patch and base64 ``data`` (HAPI
    ``BaseTransactionProcessor``'s messages for the other shapes)."""
    if isinstance(resource, dict) and resource.get("resourceType") == "Parameters":
        return tuple(fhirpath_patch.parse(resource))
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        raise InvalidRequest("Unable to determine PATCH body from request")
    content_type = resource.get("contentType")
    if not content_type or not isinstance(content_type, str):
        raise InvalidRequest("Missing or invalid content type for PATCH operation")
    if content_type.split(";", 1)[0].strip().lower() in FHIR_JSON_TYPES:
        raise InvalidRequest(
            "Binary PATCH detected with FHIR content type. FHIR Patch should use Parameters resource."
        )
    media_type(content_type)
    data = resource.get("data")
    if not isinstance(data, str) or not data:
        raise InvalidRequest("Unable to determine PATCH body from request")
    try:
        body = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("HAPI-1272: Failed to parse JSON Patch: Binary.data is not base64") from None
    return operations(body)


def failed(label: str, why: str) -> InvalidRequest:
    """HAPI ``JsonPatchUtils``: a patched result that is no valid resource (HAPI-1271)."""
    return InvalidRequest(f"HAPI-1271: Failed to apply JSON patch to {label}: {why}")


def not_applied(why: str) -> InvalidRequest:
    """HAPI ``JsonPatchUtils``: a patch that cannot be read or applied (HAPI-1272 with the JSON
    Patch library's message: a failed ``test``, a path that is not there)."""
    return InvalidRequest(f"HAPI-1272: {why}")


def _json_patch(resource: Resource, ops: JsonPatch, label: str) -> Any:
    try:
        return jsonpatch.apply_patch(copy.deepcopy(resource), ops, in_place=True)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise not_applied(f"JSON Patch test failed: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, ValueError) as exc:
        raise not_applied(f"Failed to apply JSON Patch to {label}: {exc}") from None


def apply(resource: Resource, ops: Document, label: str) -> Resource:
    """The patched copy of ``resource`` (``label``: ``Patient/1``, for messages). Any failure of
    an operation (a ``test`` that fails, a path that is not there) is HAPI's 400 HAPI-1272; a patch
    that changes the resource's ``id`` or ``resourceType`` or leaves something that is no resource
    is HAPI-1271. The result is then validated as an update validates its body."""
    if isinstance(ops, tuple):
        out: Any = fhirpath_patch.apply(resource, ops)
    else:
        out = _json_patch(resource, ops, label)
    if not isinstance(out, dict):
        raise failed(label, "the result is not a resource")
    for key in ("resourceType", "id"):
        if out.get(key) != resource.get(key):
            raise failed(label, f"a patch may not change the resource's {key}")
    return out


async def patch(
    s: WriteSession, rtype: str, rid: str, ops: Document, *, if_match: str | None = None
) -> WriteOutcome:
    """Patch ``rtype/rid`` on ``s``: the outcome of the update it amounts to (unchanged when the
    patch changes nothing)."""
    current = await s.current(rtype, rid, lock=True)
    if current is None:
        raise ResourceNotFound(f"HAPI-2001: Resource {rtype}/{rid} is not known")
    if if_match is not None:
        wanted = parse_etag(if_match)
        if wanted != current.version_id:
            raise VersionConflict(
                f"HAPI-0550: HAPI-0974: Version {wanted} is not the most recent version of this resource, "
                "unable to apply patch"
            )
    if current.deleted or current.resource is None:
        raise ResourceGone(
            f"HAPI-2244: Resource {rtype}/{rid} was deleted at {format_instant(current.last_updated)}"
        )
    return await s.update(rtype, rid, apply(current.resource, ops, f"{rtype}/{rid}"))


__all__ = [
    "CONTENT_TYPES",
    "JSON_PATCH",
    "Document",
    "JsonPatch",
    "apply",
    "failed",
    "from_entry",
    "media_type",
    "not_applied",
    "operations",
    "parse_document",
    "patch",
]
