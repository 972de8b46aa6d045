"""The FHIR shapes of a follow-up: Task, Subscription, CHT records, and small helpers around them.

A follow-up is one ServiceRequest, one Task (``basedOn``/``focus`` the ServiceRequest, ``for`` the
Patient, ``requester`` the Organization) and one Subscription (linked from ``Task.input``). The
Task carries our follow-up identifier (stable before the store assigns ids, so outbox jobs written
in the same transaction can find it) and, once the CHT accepted it, the CHT record id.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

FOLLOW_UP_SYSTEM = "urn:cht-interop:follow-up"
CHT_RECORD_SYSTEM = "urn:cht-interop:cht-record"
TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"
TASK_CODE = "fulfill"
OUTCOME_EXTENSION = "urn:cht-interop:ltfu-outcome"
OUTCOME_SYSTEM = "urn:cht-interop:CodeSystem/ltfu-outcome"
FOLLOW_UP_FORM = "interop_follow_up"
CANCEL_FORM = "interop_follow_up_cancel"

OPEN_TASK_STATUSES = ("requested", "accepted", "in-progress")
# ServiceRequest statuses our workflow may move on (to completed or revoked): the request still
# stands. A requester's own end (revoked, completed, entered-in-error, unknown) is never overwritten.
OPEN_SERVICE_REQUEST_STATUSES = ("draft", "active", "on-hold")
OPEN_TASK_STATUS_PARAM = ",".join(OPEN_TASK_STATUSES)
SUBSCRIPTION_REASON = "Follow up request for patient"

# WHO SMART HIV.H-style outreach outcomes as the CHT form codes them (docs/cht-contract.md §4).
OUTCOME_LABELS = {
    "returned_to_care": "Patient found and returning to care",
    "refused": "Patient found and refused to return",
    "not_located": "Patient not located",
    "moved_away": "Patient moved away",
    "died": "Patient died",
    "other": "Other outcome",
}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_follow_up_id() -> str:
    return str(uuid.uuid4())


def follow_up_task_search(follow_up_id: str) -> str:
    """The search that finds a follow-up's Task, also before it is written (a staged list)."""
    return f"Task?identifier={FOLLOW_UP_SYSTEM}|{follow_up_id}"


def subscription_criteria(patient_cht_id: str) -> str:
    """The reference's criteria: any Encounter carrying the patient's CHT id as an identifier.

    Kept as the reference has it (clients read it back): the CHT's Encounter carries the patient's
    CHT id whatever its configuration, while ``basedOn`` appears only with ours. Precision comes
    from switching the Subscription off once its follow-up ends, not from the criteria.
    """
    return f"Encounter?identifier={patient_cht_id}"


def new_subscription(patient_cht_id: str, callback: str) -> dict[str, Any]:
    """The reference's Subscription, written ``active`` (HAPI accepts that from a client): it must
    match from the very next write, and activation as a second version would only cost time."""
    return {
        "resourceType": "Subscription",
        "status": "active",
        "reason": SUBSCRIPTION_REASON,
        "criteria": subscription_criteria(patient_cht_id),
        "channel": {
            "type": "rest-hook",
            "endpoint": callback,
            "payload": "application/fhir+json",
            "header": ["Content-Type: application/fhir+json"],
        },
    }


def new_task(
    *,
    follow_up_id: str,
    service_request_ref: str,
    patient_id: str,
    organization_id: str,
    subscription_ref: str,
    authored: str,
) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "identifier": [{"system": FOLLOW_UP_SYSTEM, "value": follow_up_id}],
        "basedOn": [{"reference": service_request_ref}],
        "status": "requested",
        "intent": "order",
        "code": {
            "coding": [{"system": TASK_CODE_SYSTEM, "code": TASK_CODE}],
            "text": "Follow up a patient lost to follow-up, by their community health worker",
        },
        "focus": {"reference": service_request_ref},
        "for": {"reference": f"Patient/{patient_id}"},
        "requester": {"reference": f"Organization/{organization_id}"},
        "authoredOn": authored,
        "lastModified": authored,
        "input": [{"type": {"text": "subscription"}, "valueReference": {"reference": subscription_ref}}],
    }


def completed_task(
    task: dict[str, Any], encounter_ref: str, outcome: dict[str, Any] | None, now: str
) -> dict[str, Any]:
    """The follow-up's Task completed by the CHW's Encounter (``Encounter/<id>`` or its fullUrl in
    the same transaction), with the outcome the report carried."""
    done = dict(task)
    done["status"] = "completed"
    done["lastModified"] = now
    done["output"] = [
        *(task.get("output") or []),
        {"type": {"text": "encounter"}, "valueReference": {"reference": encounter_ref}},
    ]
    if outcome is not None:
        done["businessStatus"] = outcome
        done["output"].append({"type": {"text": "outcome"}, "valueCodeableConcept": outcome})
    return done


def ended_service_request(
    sr: dict[str, Any], status: str, note: str | None, now: str
) -> dict[str, Any] | None:
    """The ServiceRequest following its follow-up's end (``completed`` or ``revoked``), or None when
    the request has already ended. R4's ServiceRequest has no ``statusReason``: the reason of a
    revocation we decide (expiry, CHT failure) goes into ``note``, as an Annotation; the Task
    carries it too, in ``statusReason``."""
    if sr.get("status") not in OPEN_SERVICE_REQUEST_STATUSES:
        return None
    ended = {**sr, "status": status}
    if note:
        ended["note"] = [*(sr.get("note") or []), {"time": now, "text": note}]
    return ended


def follow_up_record(
    *, patient_cht_id: str, reason: str, requester_name: str, requester_identifier: str
) -> dict[str, Any]:
    """docs/cht-contract.md §1 without the two ids the store assigns (the job handler adds them)."""
    return {
        "_meta": {"form": FOLLOW_UP_FORM},
        "patient_uuid": patient_cht_id,
        "reason": reason,
        "requester": requester_name,
        "requester_id": requester_identifier,
    }


def cancel_record(*, patient_cht_id: str, service_request_id: str, reason: str) -> dict[str, Any]:
    """docs/cht-contract.md §2."""
    return {
        "_meta": {"form": CANCEL_FORM},
        "patient_uuid": patient_cht_id,
        "service_request_id": service_request_id,
        "reason": reason,
    }


def service_request_reason(sr: dict[str, Any]) -> str:
    """A short text for the CHW: the reason, else the code, else a default."""
    for key in ("reasonCode", "code"):
        value = sr.get(key)
        concepts = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
        for concept in concepts:
            if not isinstance(concept, dict):
                continue
            if isinstance(concept.get("text"), str) and concept["text"].strip():
                return str(concept["text"])
            for coding in concept.get("coding") or []:
                if isinstance(coding, dict):
                    label = coding.get("display") or coding.get("code")
                    if isinstance(label, str) and label:
                        return label
    return "Missed appointment: please trace and return to care"


def first_identifier_value(resource: dict[str, Any], system: str | None = None) -> str | None:
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and (system is None or identifier.get("system") == system):
            value = identifier.get("value")
            if isinstance(value, str):
                return value
    return None


def ref_id(reference: Any, resource_type: str) -> str | None:
    """``Type/id`` (relative, possibly with ``_history``, or absolute) → id."""
    if isinstance(reference, dict):
        reference = reference.get("reference")
    if not isinstance(reference, str):
        return None
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


def task_subscription_id(task: dict[str, Any]) -> str | None:
    for item in task.get("input") or []:
        if isinstance(item, dict) and (item.get("type") or {}).get("text") == "subscription":
            return ref_id(item.get("valueReference"), "Subscription")
    return None


def task_service_request_id(task: dict[str, Any]) -> str | None:
    for ref in task.get("basedOn") or []:
        found = ref_id(ref, "ServiceRequest")
        if found:
            return found
    return None


def encounter_outcome(encounter: dict[str, Any]) -> dict[str, Any] | None:
    """The CHW's outcome the CHT report carried (docs/cht-contract.md §5), as a CodeableConcept."""
    for ext in encounter.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == OUTCOME_EXTENSION:
            concept = ext.get("valueCodeableConcept")
            if isinstance(concept, dict):
                concept = dict(concept)
                for coding in concept.get("coding") or []:
                    code = coding.get("code") if isinstance(coding, dict) else None
                    if code in OUTCOME_LABELS and not concept.get("text"):
                        concept["text"] = OUTCOME_LABELS[code]
                return concept
    return None


def location_id(location: str | None, resource_type: str) -> str:
    """The id in a transaction-response ``location`` (``Type/id/_history/n``, maybe absolute)."""
    found = ref_id(location, resource_type)
    if found is None:
        raise ValueError(f"no {resource_type} id in location {location!r}")
    return found
