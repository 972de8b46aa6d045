"""The reference mediator's request rules, restated, plus our own checks (callback addresses,
whose policy is ``callbacks.py``).

Every rule raises ``InvalidRequest`` (400, OperationOutcome) with a message a reference client can
show; the messages keep the reference's joi style (``"identifier" must contain exactly one item``)
with the FHIR path in ``expression``. Nothing here touches the store: the workflow steps resolve
references after validation passed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cht_interop.fhir.errors import InvalidRequest
from cht_interop.fhir.registry import get_type
from cht_interop.ltfu.callbacks import check_callback_address

ENDPOINT_CONNECTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
ENDPOINT_CONNECTION_CODE = "hl7-fhir-rest"
CHT_SYSTEM = "cht"
CHT_REPORT_SYSTEM = "cht-report"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")


def _required_codes(resource_type: str, element: str) -> frozenset[str]:
    """A required-binding value set, from the one registry the FHIR store validates with."""
    rtype = get_type(resource_type)
    if rtype is None:
        raise KeyError(resource_type)
    return rtype.codes[element]


GENDERS = _required_codes("Patient", "gender")
SERVICE_REQUEST_STATUSES = _required_codes("ServiceRequest", "status")
SERVICE_REQUEST_INTENTS = _required_codes("ServiceRequest", "intent")
ENCOUNTER_STATUSES = _required_codes("Encounter", "status")
# The reference's CHT mapping sends ``class`` as a bare word; R4 wants a v3-ActCode Coding.
_CLASS_WORDS: dict[str, tuple[str, str]] = {
    "outpatient": ("AMB", "ambulatory"),
    "ambulatory": ("AMB", "ambulatory"),
    "amb": ("AMB", "ambulatory"),
    "home": ("HH", "home health"),
    "home health": ("HH", "home health"),
    "hh": ("HH", "home health"),
    "virtual": ("VR", "virtual"),
    "vr": ("VR", "virtual"),
    "field": ("FLD", "field"),
    "fld": ("FLD", "field"),
    "inpatient": ("IMP", "inpatient encounter"),
    "imp": ("IMP", "inpatient encounter"),
    "emergency": ("EMER", "emergency"),
    "emer": ("EMER", "emergency"),
}


def invalid(message: str, *expression: str) -> InvalidRequest:
    return InvalidRequest(message, expression=list(expression) or None)


def _require_object(body: Any, resource_type: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid(f"the body must be a {resource_type} JSON object")
    declared = body.get("resourceType")
    if declared is not None and declared != resource_type:
        raise invalid(f'"resourceType" must be [{resource_type}]', f"{resource_type}.resourceType")
    return body


def _list(body: Mapping[str, Any], key: str, resource_type: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        raise invalid(f'"{key}" is required', f"{resource_type}.{key}")
    if not isinstance(value, list):
        raise invalid(f'"{key}" must be an array', f"{resource_type}.{key}")
    return value


def _non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def is_uuid(value: Any) -> bool:
    return isinstance(value, str) and bool(_UUID.match(value))


def _is_code(value: Any, allowed: frozenset[str]) -> bool:
    """``value`` is one of the ``allowed`` codes (a list or object is no code: checked before the
    set look-up, which would raise on an unhashable value)."""
    return isinstance(value, str) and value in allowed


# -- Endpoint --------------------------------------------------------------------------------------


def validate_endpoint(body: Any, *, allow_private: bool) -> dict[str, Any]:
    """Reference rules: HL7 FHIR REST connection type, exactly one identifier; ours: a safe address.

    Returns a copy ready to store (``status``/``payloadType`` filled in when a reference client left
    them out, so the stored Endpoint is valid R4).
    """
    body = _require_object(body, "Endpoint")
    identifiers = _list(body, "identifier", "Endpoint")
    if len(identifiers) != 1:
        raise invalid('"identifier" must contain exactly one item', "Endpoint.identifier")
    _check_identifier(identifiers[0], "Endpoint.identifier[0]")
    ctype = body.get("connectionType")
    if not isinstance(ctype, dict):
        raise invalid('"connectionType" is required', "Endpoint.connectionType")
    if ctype.get("system") != ENDPOINT_CONNECTION_SYSTEM:
        raise invalid(
            f'"connectionType.system" must be [{ENDPOINT_CONNECTION_SYSTEM}]',
            "Endpoint.connectionType.system",
        )
    if ctype.get("code") != ENDPOINT_CONNECTION_CODE:
        raise invalid(
            f'"connectionType.code" must be [{ENDPOINT_CONNECTION_CODE}]', "Endpoint.connectionType.code"
        )
    address = body.get("address")
    if not _non_empty_string(address):
        raise invalid('"address" is required', "Endpoint.address")
    check_callback_address(address, allow_private=allow_private)
    stored = {k: v for k, v in body.items() if k not in ("id", "meta")}
    stored["resourceType"] = "Endpoint"
    stored.setdefault("status", "active")
    stored.setdefault(
        "payloadType",
        [{"coding": [{"system": "urn:ietf:bcp:13", "code": "application/fhir+json"}]}],
    )
    stored.setdefault("name", address)
    return stored


def _check_identifier(identifier: Any, path: str) -> dict[str, Any]:
    if not isinstance(identifier, dict) or not _non_empty_string(identifier.get("value")):
        raise invalid(f'"{path}.value" is required', path)
    system = identifier.get("system")
    if system is not None and not isinstance(system, str):
        raise invalid(f'"{path}.system" must be a string', path)
    return identifier


def identifier_token(identifier: Mapping[str, Any]) -> str:
    """The search token of an identifier: ``system|value``, or ``|value`` when it has no system."""
    system = identifier.get("system") or ""
    return f"{system}|{identifier['value']}"


# -- Organization ----------------------------------------------------------------------------------


def validate_organization(body: Any) -> tuple[dict[str, Any], str]:
    """Exactly one ``endpoint`` reference ``Endpoint/<id>``; ``name`` a string or a one-item array.

    Returns the Organization to store (name as an R4 string) and the referenced Endpoint id.
    """
    body = _require_object(body, "Organization")
    endpoints = _list(body, "endpoint", "Organization")
    if len(endpoints) != 1:
        raise invalid('"endpoint" must contain exactly one item', "Organization.endpoint")
    ref = endpoints[0].get("reference") if isinstance(endpoints[0], dict) else None
    endpoint_id = _local_id(ref, "Endpoint")
    if endpoint_id is None:
        raise invalid('"endpoint[0].reference" must be of the form Endpoint/<id>', "Organization.endpoint[0]")
    stored = {k: v for k, v in body.items() if k not in ("id", "meta")}
    stored["resourceType"] = "Organization"
    name = body.get("name")
    if isinstance(name, list):
        if len(name) != 1 or not _non_empty_string(name[0]):
            raise invalid('"name" must be a string or an array of one string', "Organization.name")
        stored["name"] = name[0]
    elif name is not None and not _non_empty_string(name):
        raise invalid('"name" must be a string', "Organization.name")
    identifiers = body.get("identifier")
    if identifiers is not None:
        if not isinstance(identifiers, list):
            raise invalid('"identifier" must be an array', "Organization.identifier")
        for i, identifier in enumerate(identifiers):
            _check_identifier(identifier, f"Organization.identifier[{i}]")
    stored["endpoint"] = [{"reference": f"Endpoint/{endpoint_id}"}]
    return stored, endpoint_id


def _local_id(reference: Any, resource_type: str) -> str | None:
    if not isinstance(reference, str):
        return None
    prefix = f"{resource_type}/"
    if not reference.startswith(prefix):
        return None
    rest = reference[len(prefix) :]
    return rest if rest and "/" not in rest and "?" not in rest else None


# -- Patient ---------------------------------------------------------------------------------------


def validate_patient(body: Any) -> tuple[dict[str, Any], str]:
    """Identifiers with system ``cht`` and a UUID; names with a family and exactly one given; gender.

    ``birthDate`` must not be empty when given. (The reference requires it; our CHT configuration
    omits it for patients without a date of birth rather than failing the push forever, see
    docs/cht-contract.md §5.) Returns the Patient to store and its CHT id (the first identifier).
    """
    body = _require_object(body, "Patient")
    identifiers = _list(body, "identifier", "Patient")
    if not identifiers:
        raise invalid('"identifier" must contain at least 1 item', "Patient.identifier")
    for i, identifier in enumerate(identifiers):
        path = f"Patient.identifier[{i}]"
        if not isinstance(identifier, dict) or identifier.get("system") != CHT_SYSTEM:
            raise invalid(f'"identifier[{i}].system" must be [{CHT_SYSTEM}]', path)
        if not is_uuid(identifier.get("value")):
            raise invalid(f'"identifier[{i}].value" must be a valid GUID', path)
    names = _list(body, "name", "Patient")
    if not names:
        raise invalid('"name" must contain at least 1 item', "Patient.name")
    for i, name in enumerate(names):
        path = f"Patient.name[{i}]"
        if not isinstance(name, dict) or not _non_empty_string(name.get("family")):
            raise invalid(f'"name[{i}].family" is required', path)
        given = name.get("given")
        if not isinstance(given, list) or len(given) != 1 or not _non_empty_string(given[0]):
            raise invalid(f'"name[{i}].given" must contain exactly one item', path)
    gender = body.get("gender")
    if gender is None:
        raise invalid('"gender" is required', "Patient.gender")
    if not _is_code(gender, GENDERS):
        raise invalid(f'"gender" must be one of [{", ".join(sorted(GENDERS))}]', "Patient.gender")
    if "birthDate" in body:
        birth = body["birthDate"]
        if not _non_empty_string(birth):
            raise invalid('"birthDate" is not allowed to be empty', "Patient.birthDate")
        if not _DATE.match(birth):
            raise invalid('"birthDate" must be a date (YYYY, YYYY-MM or YYYY-MM-DD)', "Patient.birthDate")
    stored = {k: v for k, v in body.items() if k not in ("id", "meta")}
    stored["resourceType"] = "Patient"
    return stored, identifiers[0]["value"]


# -- ServiceRequest --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FollowUpRequest:
    """A validated ServiceRequest: what the service needs to start a follow-up."""

    resource: dict[str, Any]
    patient_ref: str  # the ``<CHT id>`` of ``Patient/<CHT id>``
    requester_ref: str  # the ``<organization identifier>`` of ``Organization/<identifier>``
    schema_checked: bool = False  # already through the embedded store's R4 check (and repairs)


def validate_service_request(body: Any) -> FollowUpRequest:
    """intent, status, ``subject`` = ``Patient/<CHT id>``, ``requester`` = ``Organization/<identifier>``."""
    body = _require_object(body, "ServiceRequest")
    intent = body.get("intent")
    if intent is None:
        raise invalid('"intent" is required', "ServiceRequest.intent")
    if not _is_code(intent, SERVICE_REQUEST_INTENTS):
        raise invalid(
            f'"intent" must be one of [{", ".join(sorted(SERVICE_REQUEST_INTENTS))}]', "ServiceRequest.intent"
        )
    status = body.get("status")
    if status is None:
        raise invalid('"status" is required', "ServiceRequest.status")
    if not _is_code(status, SERVICE_REQUEST_STATUSES):
        raise invalid(
            f'"status" must be one of [{", ".join(sorted(SERVICE_REQUEST_STATUSES))}]',
            "ServiceRequest.status",
        )
    if status != "active":
        raise invalid('"status" must be [active] to start a follow-up', "ServiceRequest.status")
    subject = body.get("subject")
    if not isinstance(subject, dict) or subject.get("reference") is None:
        raise invalid('"subject" is required', "ServiceRequest.subject")
    patient_ref = _local_id(subject.get("reference"), "Patient")
    if patient_ref is None:
        raise invalid('"subject.reference" must be of the form Patient/<CHT id>', "ServiceRequest.subject")
    requester = body.get("requester")
    if not isinstance(requester, dict) or requester.get("reference") is None:
        raise invalid('"requester" is required', "ServiceRequest.requester")
    requester_ref = _local_id(requester.get("reference"), "Organization")
    if requester_ref is None:
        raise invalid(
            '"requester.reference" must be of the form Organization/<organization identifier>',
            "ServiceRequest.requester",
        )
    identifiers = body.get("identifier")
    if identifiers is not None:
        if not isinstance(identifiers, list):
            raise invalid('"identifier" must be an array', "ServiceRequest.identifier")
        for i, identifier in enumerate(identifiers):
            _check_identifier(identifier, f"ServiceRequest.identifier[{i}]")
    stored = {k: v for k, v in body.items() if k not in ("id", "meta")}
    stored["resourceType"] = "ServiceRequest"
    return FollowUpRequest(stored, patient_ref, requester_ref)


def validate_revoke(body: Any, service_request_id: str) -> None:
    """A PUT through the mediator may only revoke: same id (if given), ``status`` = ``revoked``."""
    body = _require_object(body, "ServiceRequest")
    if body.get("id") is not None and body.get("id") != service_request_id:
        raise invalid('"id" must match the ServiceRequest id in the URL', "ServiceRequest.id")
    if body.get("status") != "revoked":
        raise invalid(
            '"status" must be [revoked]: the mediator only cancels follow-ups; other changes go to /fhir',
            "ServiceRequest.status",
        )


def cancel_reason(body: Any) -> str | None:
    """The ``reason`` (valueString) of a ``$cancel`` Parameters body, if any; a body that is no
    Parameters is ignored, as before, but a Parameters of the wrong shape is a 400."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        return None
    params = body.get("parameter")
    if params is None:
        return None
    if not isinstance(params, list):
        raise invalid('"parameter" must be an array', "Parameters.parameter")
    for i, param in enumerate(params):
        if not isinstance(param, dict):
            raise invalid(f'"parameter[{i}]" must be an object', f"Parameters.parameter[{i}]")
        if param.get("name") == "reason":
            reason = param.get("valueString")
            if not isinstance(reason, str):
                raise invalid('"reason" must be a valueString', f"Parameters.parameter[{i}]")
            return reason
    return None


def _short(value: Any) -> str:
    """A client's value, shown in a message at most 60 characters long."""
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- Encounter -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChtEncounter:
    """A validated Encounter from the CHT: the resource (class normalised) and its CHT keys."""

    resource: dict[str, Any]
    patient_cht_id: str
    report_id: str | None  # ``cht-report`` identifier, when the CHT config sends it
    subject_patient_id: str | None  # when the subject is a plain ``Patient/<id>``
    service_request_id: str | None  # from ``basedOn`` ``ServiceRequest/<id>``


def validate_encounter(body: Any) -> ChtEncounter:
    """Reference rules (one ``cht`` identifier with a UUID, status, class, subject, one type, one
    participant), accepting both the reference's shape and strict R4."""
    body = _require_object(body, "Encounter")
    identifiers = _list(body, "identifier", "Encounter")
    cht = [i for i in identifiers if isinstance(i, dict) and i.get("system") == CHT_SYSTEM]
    if len(cht) != 1:
        raise invalid(
            f'"identifier" must contain exactly one item with system [{CHT_SYSTEM}]', "Encounter.identifier"
        )
    patient_cht_id = cht[0].get("value")
    if not isinstance(patient_cht_id, str) or not is_uuid(patient_cht_id):
        raise invalid('"identifier.value" must be a valid GUID', "Encounter.identifier")
    reports = [i for i in identifiers if isinstance(i, dict) and i.get("system") == CHT_REPORT_SYSTEM]
    report_id = reports[0].get("value") if reports else None
    if report_id is not None and not _non_empty_string(report_id):
        raise invalid('"identifier.value" is required for the cht-report identifier', "Encounter.identifier")
    status = body.get("status")
    if status is None:
        raise invalid('"status" is required', "Encounter.status")
    if not _is_code(status, ENCOUNTER_STATUSES):
        shown = _short(status)
        raise invalid(f'"Encounter.status" Code "{shown}" not found in value set', "Encounter.status")
    if body.get("class") is None:
        raise invalid('"class" is required', "Encounter.class")
    encounter_class = normalise_class(body["class"])
    subject = body.get("subject")
    if not isinstance(subject, dict) or not _non_empty_string(subject.get("reference")):
        raise invalid('"subject" is required', "Encounter.subject")
    subject_patient_id = _subject_patient_id(subject["reference"], patient_cht_id)
    types = _list(body, "type", "Encounter")
    if len(types) != 1:
        raise invalid('"type" must contain exactly one item', "Encounter.type")
    participants = _list(body, "participant", "Encounter")
    if len(participants) != 1:
        raise invalid('"participant" must contain exactly one item', "Encounter.participant")
    service_request_id: str | None = None
    based_on = body.get("basedOn")
    if isinstance(based_on, list):
        for ref in based_on:
            sr = _local_id(ref.get("reference") if isinstance(ref, dict) else None, "ServiceRequest")
            if sr is not None and FHIR_ID.match(sr):
                service_request_id = sr
                break
    stored = {k: v for k, v in body.items() if k not in ("id", "meta")}
    stored["resourceType"] = "Encounter"
    stored["class"] = encounter_class
    return ChtEncounter(stored, patient_cht_id, report_id, subject_patient_id, service_request_id)


def _subject_patient_id(reference: str, patient_cht_id: str) -> str | None:
    """``Patient/<id>`` → id; ``Patient/?identifier=<x>`` / ``Patient?identifier=<x>`` → None (resolve
    by identifier, which must then name the Encounter's CHT patient)."""
    for prefix in ("Patient/?", "Patient?"):
        if reference.startswith(prefix):
            query = reference[len(prefix) :]
            key, _, value = query.partition("=")
            token = value.split("|")[-1]
            if key != "identifier" or not token:
                raise invalid('"subject.reference" must be Patient/?identifier=<CHT id>', "Encounter.subject")
            if token != patient_cht_id:
                raise invalid(
                    '"subject.reference" names another patient than the cht identifier', "Encounter.subject"
                )
            return None
    patient_id = _local_id(reference, "Patient")
    if patient_id is None:
        raise invalid(
            '"subject.reference" must be Patient/<id> or Patient/?identifier=<CHT id>', "Encounter.subject"
        )
    return patient_id


def normalise_class(value: Any) -> dict[str, Any]:
    """A v3-ActCode Coding from the reference's bare word or an R4 Coding."""
    if isinstance(value, str):
        if not value.strip():
            raise invalid('"class" is not allowed to be empty', "Encounter.class")
        known = _CLASS_WORDS.get(value.strip().lower())
        if known is not None:
            return {"system": V3_ACT_CODE, "code": known[0], "display": known[1]}
        return {"display": value.strip()}
    if isinstance(value, dict) and (
        _non_empty_string(value.get("code")) or _non_empty_string(value.get("display"))
    ):
        return dict(value)
    raise invalid('"class" must be a Coding or a class name', "Encounter.class")
