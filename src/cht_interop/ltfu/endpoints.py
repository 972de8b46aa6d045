"""``/mediator/*``: the reference mediator's routes, thin over the LTFU rooms (``service.py``).

Every route needs an authenticated interop client. Bodies are read as JSON whatever the content
type (the CHT's outbound push and the reference's clients send ``application/json``). Each route
parses HTTP, calls one step, and shapes its answer: headers, links, the list status.
"""

from __future__ import annotations

import time
from datetime import UTC, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from cht_interop.fhir.client import WriteResult
from cht_interop.fhir.errors import (
    InvalidRequest,
    IssueSeverity,
    IssueType,
    PayloadTooLarge,
    ResourceNotFound,
    operation_outcome,
)
from cht_interop.gateway.auth import require_client
from cht_interop.kit import exchanges
from cht_interop.kit.http import fhir_base, fhir_response, public_base
from cht_interop.kit.json_body import JsonTooDeep, parse_json_body
from cht_interop.ltfu import openapi as docs
from cht_interop.ltfu.model import FollowUp
from cht_interop.ltfu.resources import follow_up_task_search
from cht_interop.ltfu.service import LtfuService

if TYPE_CHECKING:
    from cht_interop.services import Services

router = APIRouter(dependencies=[Depends(require_client)], tags=["mediator"])
_PROCESS_STARTED = time.monotonic()


def _service(request: Request) -> LtfuService:
    """The process's LtfuService (shared with the outbox worker: one duplicate-check lock)."""
    service: LtfuService = request.app.state.services.ltfu
    return service


async def _json_body(request: Request) -> Any:
    services: Services = request.app.state.services
    body = await request.body()
    if len(body) > services.settings.max_body_bytes:
        raise PayloadTooLarge(f"request body over {services.settings.max_body_bytes} bytes")
    if not body:
        raise InvalidRequest("the request body is empty")
    try:
        return await parse_json_body(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except JsonTooDeep as exc:
        raise InvalidRequest(f"the request body is refused: {exc} (the server's limit)") from None


def _written(request: Request, result: WriteResult) -> Response:
    resource = result.resource
    headers = {}
    if result.created:
        headers["Location"] = f"{fhir_base(request)}/{resource['resourceType']}/{resource['id']}"
    return fhir_response(resource, result.status, headers)


@router.get("/", **docs.STATUS)
async def mediator_status() -> dict[str, Any]:
    """Mediator liveness, as the reference answers it."""
    return _liveness()


def _liveness() -> dict[str, Any]:
    """The reference's liveness answer (``/proc/uptime`` is in memory: reading it does not block)."""
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            os_uptime = float(f.read().split()[0])
    except OSError:
        os_uptime = time.monotonic()
    return {
        "status": "success",
        "osuptime": os_uptime,
        "processuptime": time.monotonic() - _PROCESS_STARTED,
    }


@router.post("/endpoint", **docs.ENDPOINT)
async def create_endpoint(request: Request) -> Response:
    """Register a requesting system's callback address (deduplicated by identifier)."""
    return _written(request, await _service(request).requesters.register_endpoint(await _json_body(request)))


@router.post("/organization", **docs.ORGANIZATION)
async def create_organization(request: Request) -> Response:
    """Register a requesting organization pointing at its Endpoint (deduplicated by identifier)."""
    return _written(
        request, await _service(request).requesters.register_organization(await _json_body(request))
    )


@router.post("/patient", **docs.PATIENT)
async def upsert_patient(request: Request) -> Response:
    """The CHT's outbound push of a patient: created once, updated on re-push."""
    return _written(request, await _service(request).patients.upsert(await _json_body(request)))


@router.post("/service-request", **docs.SERVICE_REQUEST)
async def create_service_request(request: Request) -> Response:
    """Start a follow-up (201 with its Subscription), or a Bundle of them (an LTFU list)."""
    body = await _json_body(request)
    intake = _service(request).intake
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        answer = await intake.request_follow_up_list(
            body, respond_async=_wants_async(request), client_id=request.state.client_id
        )
        headers = {}
        exchanges.note("listEntries", len(answer.bundle["entry"]))
        if answer.list_id is not None:
            exchanges.note("listId", answer.list_id)
            status_url = _list_status_url(request, answer.list_id)
            headers["Content-Location"] = status_url
            answer.bundle["link"] = [{"relation": "status", "url": status_url}]
        return fhir_response(answer.bundle, answer.status, headers)
    result = await intake.request_follow_up(body, request.state.client_id)
    _note_follow_up(body, result)
    return fhir_response(result.subscription, result.status, _follow_up_links(request, result))


def _note_follow_up(body: Any, result: FollowUp) -> None:
    """What an OpenHIM administrator filters this follow-up's transaction on."""
    subject = body.get("subject") if isinstance(body, dict) else None
    if isinstance(subject, dict) and isinstance(subject.get("reference"), str):
        exchanges.note("patientId", subject["reference"].rsplit("/", 1)[-1])
    exchanges.note("followUpId", result.follow_up_id)
    exchanges.note("serviceRequestId", result.service_request_id)
    exchanges.note("taskId", result.task_id)
    exchanges.note("subscriptionId", result.subscription_id)
    exchanges.note("listId", result.list_id)


def _wants_async(request: Request) -> bool:
    """FHIR's asynchronous request pattern: ``Prefer: respond-async``."""
    prefer = request.headers.get("prefer", "")
    return any(part.strip().lower() == "respond-async" for part in prefer.split(","))


def _list_status_url(request: Request, list_id: str) -> str:
    return f"{public_base(request)}/mediator/ltfu-lists/{list_id}"


@router.get("/ltfu-lists/{list_id}", **docs.LIST_STATUS)
async def ltfu_list_status(list_id: str, request: Request) -> Response:
    """A staged LTFU list, as FHIR's asynchronous pattern answers: 202 with ``X-Progress`` (and an
    informational OperationOutcome) while its follow-ups are being written, then 200 with the
    whole batch-response, one entry per list entry."""
    status = await _service(request).staged_lists.status(list_id, request.state.principal)
    settings = request.app.state.services.settings
    if status is None:
        kept = _duration(settings.ltfu_list_retention_seconds)
        raise ResourceNotFound(
            f"LTFU list {list_id} is not known (a finished list's status is kept for {kept} after its "
            "last follow-up is written; the follow-ups themselves stay, see /fhir/Task)"
        )
    progress = f"{status.staged_count - status.remaining} of {status.staged_count} follow-ups done"
    headers = {"X-Progress": progress}
    if status.remaining:
        outcome = operation_outcome(
            f"LTFU list {list_id}: {progress}",
            severity=IssueSeverity.INFORMATION,
            code=IssueType.INFORMATIONAL,
        )
        return fhir_response(outcome, 202, headers)
    if status.done_at is not None:
        expires = status.done_at + timedelta(seconds=settings.ltfu_list_retention_seconds)
        headers["Expires"] = format_datetime(expires.astimezone(UTC), usegmt=True)
    bundle = {
        "resourceType": "Bundle",
        "id": list_id,
        "type": "batch-response",
        "link": [{"relation": "self", "url": _list_status_url(request, list_id)}],
        "entry": status.entries,
    }
    return fhir_response(bundle, headers=headers)


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def _follow_up_links(request: Request, result: FollowUp) -> dict[str, str]:
    base = fhir_base(request)
    headers: dict[str, str] = {}
    links = []
    if result.list_id:
        headers["Content-Location"] = _list_status_url(request, result.list_id)
    if result.follow_up_id and not result.task_id:
        links.append(f'<{base}/{follow_up_task_search(result.follow_up_id)}>; rel="related"; title="Task"')
    if result.service_request_id:
        headers["Location"] = f"{base}/ServiceRequest/{result.service_request_id}"
        links.append(
            f'<{base}/ServiceRequest/{result.service_request_id}>; rel="related"; title="ServiceRequest"'
        )
    if result.task_id:
        links.append(f'<{base}/Task/{result.task_id}>; rel="related"; title="Task"')
    if result.subscription_id:
        links.append(f'<{base}/Subscription/{result.subscription_id}>; rel="related"; title="Subscription"')
    if links:
        headers["Link"] = ", ".join(links)
    return headers


@router.put("/service-request/{service_request_id}", **docs.REVOKE)
async def revoke_service_request(service_request_id: str, request: Request) -> Response:
    """Revoke a follow-up: the body is the ServiceRequest with ``status`` = ``revoked``."""
    from cht_interop.ltfu.validation import validate_revoke

    validate_revoke(await _json_body(request), service_request_id)
    exchanges.note("serviceRequestId", service_request_id)
    sr = await _service(request).lifecycle.cancel(service_request_id, caller=request.state.principal)
    exchanges.note("serviceRequestStatus", sr.get("status"))
    return fhir_response(sr)


@router.post("/service-request/{service_request_id}/$cancel", **docs.CANCEL)
async def cancel_service_request(service_request_id: str, request: Request) -> Response:
    """Cancel a follow-up; an optional Parameters body may carry a ``reason`` (valueString)."""
    from cht_interop.ltfu.validation import cancel_reason

    reason = cancel_reason(await _json_body(request)) if await request.body() else None
    exchanges.note("serviceRequestId", service_request_id)
    sr = await _service(request).lifecycle.cancel(service_request_id, reason, request.state.principal)
    exchanges.note("serviceRequestStatus", sr.get("status"))
    return fhir_response(sr)


@router.post("/encounter", **docs.ENCOUNTER)
async def create_encounter(request: Request) -> Response:
    """The CHT's outbound push of a completed follow-up: stored once, completes its follow-up."""
    return _written(request, await _service(request).encounters.record(await _json_body(request)))
