"""``$validate`` on ``[type]`` and ``[type]/[id]``, as HAPI's JPA server answers it
(``BaseHapiFhirResourceDao.validate`` and its ``IdChecker``). Nothing is ever written.

- the body is the resource, or a ``Parameters`` with ``resource``, ``mode`` (create | update |
  delete) and ``profile``; an instance-level call without a resource validates the stored one;
- on ``[type]/[id]`` the resource must exist (404 / 410, as a read);
- mode create with an id → 422 HAPI-0997; mode update without one → 422 HAPI-0998; mode update
  with another id than the URL's → 400 HAPI-0420 (ours: the update itself would refuse it);
- mode delete needs an id (400 HAPI-0991) and answers "Ok to delete", or 409 while another
  resource refers to it (HAPI's referential integrity on delete, the message of our delete);
- no issue → 200 and one informational issue "No issues detected during validation" (HAPI's
  ``ValidationResult.toOperationOutcome``); any error → 412 with the issues (HAPI-0993: the body
  is the OperationOutcome of the issues).

The checks are the R4B model's and our required bindings' (``validation.validation_issues``), not
HAPI's instance validator with its terminology and profile support: a ``profile`` other than the
base one is reported as not checked, as HAPI does for a profile it cannot find.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cht_interop.db import Database
from cht_interop.fhir import reads, sql
from cht_interop.fhir.errors import InvalidRequest, PreconditionFailed, Unprocessable, delete_conflict
from cht_interop.fhir.outcomes import Resource, outcome_info
from cht_interop.fhir.registry import RESOURCE_TYPES
from cht_interop.fhir.validation import validation_issues

MODES = ("create", "update", "delete")
NO_ISSUES = "No issues detected during validation"


@dataclass(frozen=True, slots=True)
class ValidateRequest:
    resource: dict[str, Any] | None
    mode: str | None = None
    profile: str | None = None


def parse_request(body: Any) -> ValidateRequest:
    """The resource, mode and profile of a ``$validate`` body (``None``: no body)."""
    if body is None:
        return ValidateRequest(None)
    if not isinstance(body, dict):
        raise InvalidRequest("HAPI-0450: Failed to parse request body as JSON resource: not a JSON object")
    if body.get("resourceType") != "Parameters":
        return ValidateRequest(body)
    resource = mode = profile = None
    for param in body.get("parameter") or []:
        if not isinstance(param, dict):
            continue
        name = param.get("name")
        if name == "resource" and isinstance(param.get("resource"), dict):
            resource = param["resource"]
        elif name == "mode":
            mode = _value(param)
        elif name == "profile":
            profile = _value(param)
    if mode is not None and mode not in MODES:
        raise InvalidRequest(f"Invalid mode value: {mode!r} (expected create, update or delete)")
    return ValidateRequest(resource, mode, profile)


def _value(param: dict[str, Any]) -> str | None:
    for key in ("valueCode", "valueString", "valueUri", "valueCanonical"):
        if isinstance(param.get(key), str):
            return str(param[key])
    return None


async def validate(db: Database, rtype: str, rid: str | None, req: ValidateRequest) -> Resource:
    """The OperationOutcome of a valid resource, or the error (412 with the issues, 4xx)."""
    if req.mode == "delete":
        return await _validate_delete(db, rtype, rid)
    resource = req.resource
    if rid is not None:
        stored = await reads.read(db, rtype, rid)  # 404 / 410 as a read
        if resource is None:
            resource = stored.resource
    if resource is None:
        raise InvalidRequest(
            "HAPI-0992: No resource supplied for $validate operation "
            '(resource is required unless mode is "delete")'
        )
    _check_type(resource, rtype)
    _check_id(resource, rid, req.mode)
    issues = validation_issues(resource)
    base_profile = f"http://hl7.org/fhir/StructureDefinition/{rtype}"
    if req.profile and req.profile != base_profile:
        issues.append(
            {
                "severity": "error",
                "code": "processing",
                "diagnostics": f"Profile reference '{req.profile}' has not been checked because it could not "
                "be found, and the validator is set to not fetch unknown profiles",
            }
        )
    if issues:
        raise PreconditionFailed(
            "HAPI-0993: Validation failed", outcome={"resourceType": "OperationOutcome", "issue": issues}
        )
    out = outcome_info(NO_ISSUES)
    return out


def _check_type(resource: dict[str, Any], rtype: str) -> None:
    found = resource.get("resourceType")
    if found != rtype:
        raise InvalidRequest(
            f"HAPI-0450: Failed to parse request body as JSON resource. Error was: HAPI-1843: Incorrect "
            f'resource type found, expected "{rtype}" but found "{found}"',
            expression=["resourceType"],
        )
    if rtype not in RESOURCE_TYPES:  # the route checked it; kept for direct callers
        raise InvalidRequest(f'HAPI-1684: Unknown resource name "{rtype}"')


def _check_id(resource: dict[str, Any], rid: str | None, mode: str | None) -> None:
    body_id = resource.get("id")
    if mode == "create" and body_id:
        raise Unprocessable("HAPI-0997: Resource has an ID - ID must not be populated for a FHIR create")
    if mode == "update":
        if not body_id:
            raise Unprocessable("HAPI-0998: Resource has no ID - ID must be populated for a FHIR update")
        if rid is not None and body_id != rid:
            raise InvalidRequest(
                "HAPI-0420: Can not update resource, resource body must contain an ID element which matches "
                f'the request URL for update (PUT) operation - Resource body ID of "{body_id}" does not '
                f'match URL ID of "{rid}"'
            )


async def _validate_delete(db: Database, rtype: str, rid: str | None) -> Resource:
    if rid is None:
        raise InvalidRequest("HAPI-0991: No ID supplied. ID is required when validating with mode=DELETE")
    await reads.read(db, rtype, rid)  # 404 / 410
    async with db.connect() as conn:
        ref = await sql.first_referrer(conn, rtype, rid)
    if ref is not None:
        raise delete_conflict(rtype, rid, ref.res_type, ref.res_id, ref.param)
    return outcome_info("Ok to delete")
