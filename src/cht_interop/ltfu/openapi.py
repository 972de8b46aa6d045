"""What ``/mediator`` accepts and answers, for the OpenAPI document at ``/openapi.json``.

These models only describe: the handlers keep reading bodies themselves (``ltfu/validation.py``
holds the rules and their messages), so a model can never change what a route accepts. The
examples are the ones ``tests/docs/test_openapi.py`` validates against these schemas and posts
to a real server, expecting the documented status (they live in ``openapi_examples.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cht_interop.ltfu.openapi_examples import (
    CANCEL_EXAMPLES,
    ENCOUNTER_EXAMPLES,
    ENDPOINT_EXAMPLES,
    ORGANIZATION_EXAMPLES,
    PATIENT_EXAMPLES,
    REVOKE_EXAMPLES,
    SERVICE_REQUEST_EXAMPLES,
)

FHIR_ID_PATTERN = r"^[A-Za-z0-9\-\.]{1,64}$"
FHIR_JSON = "application/fhir+json"  # as a media type in the document (answers add charset=utf-8)


class FhirJson(JSONResponse):
    """Documents answers as ``application/fhir+json``, what the handlers send."""

    media_type = FHIR_JSON


class _Element(BaseModel):
    """FHIR elements carry more than the mediator reads: unknown fields are kept, not refused."""

    model_config = ConfigDict(extra="allow")


class Identifier(_Element):
    system: str | None = None
    value: str
    use: str | None = None


class Coding(_Element):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class CodeableConcept(_Element):
    coding: list[Coding] | None = None
    text: str | None = None


class Reference(_Element):
    reference: str


class Meta(_Element):
    versionId: str | None = None
    lastUpdated: str | None = None


class Stored(_Element):
    """What the server added when it stored the resource."""

    id: str = Field(pattern=FHIR_ID_PATTERN)
    meta: Meta


# -- the requests ------------------------------------------------------------------------------


class EndpointRequest(_Element):
    """A requesting system's callback address: notifications go to ``PUT <address>/Encounter/<id>``.
    Registered again with the same identifier, it is updated (200)."""

    resourceType: Literal["Endpoint"]
    identifier: list[Identifier] = Field(min_length=1, max_length=1)
    connectionType: Coding
    address: str = Field(
        description="An absolute http(s) URL; private addresses need ALLOW_PRIVATE_CALLBACKS."
    )
    status: Literal["active", "suspended", "error", "off", "entered-in-error", "test"] | None = None
    payloadType: list[CodeableConcept] | None = None
    name: str | None = None


class OrganizationRequest(_Element):
    """The requesting organization; follow-up requests name it as ``Organization/<identifier value>``."""

    resourceType: Literal["Organization"]
    identifier: list[Identifier] | None = None
    name: str | list[str] = Field(
        description="A string (or, as the reference accepts, one string in an array)."
    )
    endpoint: list[Reference] = Field(
        min_length=1, max_length=1, description="Exactly one ``Endpoint/<id>``, registered before."
    )


class HumanName(_Element):
    family: str
    given: list[str] = Field(min_length=1, max_length=1)
    use: str | None = None


class PatientRequest(_Element):
    """The CHT's outbound push of a patient (``identifier`` system ``cht``: the contact's ``_id``)."""

    resourceType: Literal["Patient"]
    identifier: list[Identifier] = Field(min_length=1)
    name: list[HumanName] = Field(min_length=1)
    gender: Literal["male", "female", "other", "unknown"]
    birthDate: str | None = Field(default=None, pattern=r"^\d{4}(-\d{2}(-\d{2})?)?$")


class ServiceRequestRequest(_Element):
    """One follow-up request: the patient by CHT id, the requester by Organization identifier."""

    resourceType: Literal["ServiceRequest"]
    intent: str
    status: Literal["active"]
    subject: Reference = Field(description="``Patient/<CHT id>``")
    requester: Reference = Field(description="``Organization/<identifier value>``")
    identifier: list[Identifier] | None = None
    reasonCode: list[CodeableConcept] | None = None


class ServiceRequestListEntry(_Element):
    resource: ServiceRequestRequest
    request: dict[str, Any] | None = None
    fullUrl: str | None = None


class ServiceRequestList(_Element):
    """An LTFU list: a Bundle of ServiceRequests, one follow-up per entry."""

    resourceType: Literal["Bundle"]
    type: Literal["batch", "transaction", "collection"]
    entry: list[ServiceRequestListEntry]


class RevokeRequest(_Element):
    """The ServiceRequest with ``status`` = ``revoked``: the only change the mediator makes."""

    resourceType: Literal["ServiceRequest"]
    id: str | None = Field(default=None, description="If given, the id in the URL.")
    status: Literal["revoked"]


class ParametersParameter(_Element):
    name: str
    valueString: str | None = None


class CancelParameters(_Element):
    """Optional body of ``$cancel``: a ``reason`` (valueString) sent on to the CHT."""

    resourceType: Literal["Parameters"]
    parameter: list[ParametersParameter] | None = None


class EncounterRequest(_Element):
    """The CHT's outbound push of a CHW's answer: it completes the patient's follow-up."""

    resourceType: Literal["Encounter"]
    identifier: list[Identifier] = Field(
        min_length=1,
        description="Exactly one with system ``cht`` (the patient's CHT id); ``cht-report`` optional.",
    )
    status: str
    class_: Coding | str = Field(alias="class", description="A v3-ActCode Coding, or a bare class name.")
    subject: Reference = Field(description="``Patient/<id>`` or ``Patient/?identifier=<CHT id>``")
    type: list[CodeableConcept] = Field(min_length=1, max_length=1)
    participant: list[dict[str, Any]] = Field(min_length=1, max_length=1)
    basedOn: list[Reference] | None = None
    period: dict[str, Any] | None = None


# -- the answers -------------------------------------------------------------------------------


class Endpoint(EndpointRequest, Stored):
    pass


class Organization(OrganizationRequest, Stored):
    pass


class Patient(PatientRequest, Stored):
    pass


class Encounter(EncounterRequest, Stored):
    pass


class ServiceRequest(Stored):
    resourceType: Literal["ServiceRequest"]
    status: str
    intent: str
    subject: Reference


class SubscriptionChannel(_Element):
    type: Literal["rest-hook"]
    endpoint: str
    payload: str | None = None
    header: list[str] | None = None


class Subscription(Stored):
    """The follow-up's Subscription: the completing Encounter is sent to ``channel.endpoint``."""

    resourceType: Literal["Subscription"]
    status: str
    criteria: str
    channel: SubscriptionChannel
    reason: str | None = None


class OperationOutcomeIssue(_Element):
    severity: Literal["fatal", "error", "warning", "information"]
    code: str
    diagnostics: str | None = None
    expression: list[str] | None = None


class OperationOutcome(_Element):
    """Every error, and the progress of a list still being written."""

    resourceType: Literal["OperationOutcome"]
    issue: list[OperationOutcomeIssue] = Field(min_length=1)


class BatchResponseEntryStatus(_Element):
    status: str = Field(description="``201 Created``, ``200 OK``, ``202 Accepted`` or an error status.")
    location: str | None = None
    outcome: OperationOutcome | None = None


class BatchResponseEntry(_Element):
    response: BatchResponseEntryStatus
    resource: dict[str, Any] | None = None
    link: list[dict[str, Any]] | None = None


class BatchResponse(_Element):
    """One entry per list entry, in order."""

    resourceType: Literal["Bundle"]
    type: Literal["batch-response"]
    id: str | None = None
    link: list[dict[str, Any]] | None = None
    entry: list[BatchResponseEntry]


class MediatorStatus(BaseModel):
    """The reference mediator's liveness answer."""

    status: Literal["success"]
    osuptime: float
    processuptime: float


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    EndpointRequest,
    OrganizationRequest,
    PatientRequest,
    ServiceRequestRequest,
    ServiceRequestList,
    RevokeRequest,
    CancelParameters,
    EncounterRequest,
    OperationOutcome,  # every error answer refers to it
)


# -- what each route documents ----------------------------------------------------------------

ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("The body breaks a rule: nothing was written", "invalid", '"gender" is required'),
    401: (
        "No or wrong HTTP Basic credentials (answered with WWW-Authenticate)",
        "login",
        "Authentication required",
    ),
    403: (
        "The authenticated client may not use this route",
        "forbidden",
        "This client may not use this route",
    ),
    404: ("A resource the request names is not known", "not-found", "Patient/… is not known"),
    409: (
        "A ServiceRequest with this identifier exists but has no follow-up, or a concurrent change won",
        "conflict",
        "ServiceRequest/… has this identifier but no follow-up",
    ),
    413: ("The body is over MAX_BODY_BYTES", "too-long", "request body over 33554432 bytes"),
    422: (
        "The external FHIR server (FHIR_URL) refused the resource, e.g. HAPI's 422 for one it cannot process",
        "processing",
        "HAPI-0450: Failed to parse request body as JSON resource",
    ),
    503: (
        "Busy or interrupted (the database): retry after Retry-After. A single request was not "
        "written; a long list may have been committed in part, and what was is written: sent again, "
        "its entries are answered with those follow-ups",
        "transient",
        "the database is busy; retry",
    ),
}
COMMON_ERRORS = (400, 401, 403, 413)


def _outcome_response(status: int) -> dict[str, Any]:
    description, code, diagnostics = ERRORS[status]
    example = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    schema = {"$ref": "#/components/schemas/OperationOutcome"}  # added by add_request_schemas
    return {"description": description, "content": {FHIR_JSON: {"schema": schema, "example": example}}}


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


LOCATION = {"Location": _header("The created resource: <base>/fhir/<Type>/<id>")}


def _request_body(
    models: tuple[type[BaseModel], ...], examples: dict[str, Any], *, required: bool = True
) -> dict[str, Any]:
    """FHIR JSON, with the examples; plain JSON is read the same (the handlers parse JSON whatever
    the content type, as the CHT's outbound push sends ``application/json``)."""
    refs = [{"$ref": f"#/components/schemas/{model.__name__}"} for model in models]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    content = {FHIR_JSON: {"schema": schema, "examples": examples}, "application/json": {"schema": schema}}
    return {"requestBody": {"required": required, "content": content}}


def route(
    summary: str,
    answers: dict[int | str, dict[str, Any]],
    *,
    errors: tuple[int, ...] = COMMON_ERRORS,
    body: tuple[tuple[type[BaseModel], ...], dict[str, Any]] | None = None,
    body_required: bool = True,
) -> dict[str, Any]:
    """The keyword arguments of one route's decorator: its answers, errors and request body."""
    responses: dict[int | str, dict[str, Any]] = dict(answers)
    responses.update({status: _outcome_response(status) for status in errors})
    docs: dict[str, Any] = {"summary": summary, "response_class": FhirJson, "responses": responses}
    if body is not None:
        docs["openapi_extra"] = _request_body(body[0], body[1], required=body_required)
    return docs


def _stored(model: type[BaseModel], what: str) -> dict[int | str, dict[str, Any]]:
    return {
        201: {"model": model, "description": f"{what} created", "headers": LOCATION},
        200: {"model": model, "description": f"{what} existed (same identifier): updated"},
    }


STATUS: dict[str, Any] = {
    "summary": "Mediator liveness (the reference's answer)",
    "responses": {200: {"model": MediatorStatus, "description": "Up"}, 401: _outcome_response(401)},
}
ENDPOINT = route(
    "Register a callback Endpoint",
    _stored(Endpoint, "Endpoint"),
    errors=(*COMMON_ERRORS, 422),
    body=((EndpointRequest,), ENDPOINT_EXAMPLES),
)
ORGANIZATION = route(
    "Register a requesting Organization",
    _stored(Organization, "Organization"),
    errors=(*COMMON_ERRORS, 422),
    body=((OrganizationRequest,), ORGANIZATION_EXAMPLES),
)
PATIENT = route(
    "The CHT's patient push",
    _stored(Patient, "Patient"),
    errors=(*COMMON_ERRORS, 422),
    body=((PatientRequest,), PATIENT_EXAMPLES),
)
_FOLLOW_UP_HEADERS = {
    **LOCATION,
    "Link": _header("The ServiceRequest, Task and Subscription (rel=related, title=<Type>)"),
}
_LIST_HEADERS = {"Content-Location": _header("The list's status URL: <base>/mediator/ltfu-lists/<id>")}
SERVICE_REQUEST = route(
    "Start a follow-up, or an LTFU list of them",
    {
        201: {
            "model": Subscription,
            "description": "A follow-up started: its Subscription (the reference's answer)",
            "headers": _FOLLOW_UP_HEADERS,
        },
        200: {
            "model": Subscription | BatchResponse,
            "description": "An open follow-up for this patient and requester existed: its Subscription. "
            "For a list: the batch-response, every follow-up written",
            "headers": _FOLLOW_UP_HEADERS,
        },
        202: {
            "model": Subscription | BatchResponse,
            "description": "A list over LTFU_LIST_SYNC_MAX entries, or sent with Prefer: respond-async: "
            "checked and committed, follow-ups written in the background (poll Content-Location). "
            "A single request whose follow-up is being written: that follow-up",
            "headers": _LIST_HEADERS,
        },
    },
    errors=(*COMMON_ERRORS, 404, 409, 422, 503),
    body=((ServiceRequestRequest, ServiceRequestList), SERVICE_REQUEST_EXAMPLES),
)
LIST_STATUS = route(
    "An LTFU list's status",
    {
        200: {
            "model": BatchResponse,
            "description": "Every follow-up written: the batch-response (kept LTFU_LIST_RETENTION_SECONDS)",
            "headers": {
                "X-Progress": _header("<n> of <m> follow-ups done"),
                "Expires": _header("When it is deleted"),
            },
        },
        202: {
            "model": OperationOutcome,
            "description": "Follow-ups still being written (informational OperationOutcome)",
            "headers": {"X-Progress": _header("<n> of <m> follow-ups done")},
        },
    },
    errors=(401, 403, 404),
)
REVOKE = route(
    "Revoke a follow-up (status revoked)",
    {200: {"model": ServiceRequest, "description": "The ServiceRequest, revoked"}},
    errors=(*COMMON_ERRORS, 404, 409),
    body=((RevokeRequest,), REVOKE_EXAMPLES),
)
CANCEL = route(
    "Cancel a follow-up",
    {
        200: {
            "model": ServiceRequest,
            "description": "The ServiceRequest, revoked; the CHT gets a cancel record",
        }
    },
    errors=(*COMMON_ERRORS, 404, 409),
    body=((CancelParameters,), CANCEL_EXAMPLES),
    body_required=False,
)
ENCOUNTER = route(
    "The CHT's push of a CHW's answer",
    _stored(Encounter, "Encounter"),
    errors=(*COMMON_ERRORS, 404, 409, 422),
    body=((EncounterRequest,), ENCOUNTER_EXAMPLES),
)


def add_request_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """Put the request models (referenced by ``openapi_extra``) and OperationOutcome (every error
    answer's) into the document's components."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        for name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas[model.__name__] = schema
    return document
