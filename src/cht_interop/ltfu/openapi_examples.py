"""The examples of the ``/mediator`` OpenAPI document, each with the status a real server answers
it (``x-expected-status``): ``tests/docs/test_openapi.py`` validates each against its schema and
posts it, in the order a requesting system and the CHT would."""

from __future__ import annotations

from typing import Any

CHT_PATIENT_ID = "3e2f62a4-7b7c-4c1a-9e55-3c1d2b7c9f10"  # a CHT contact _id (a UUID)
ORGANIZATION_IDENTIFIER = "facility-athena"
EXAMPLE_ENDPOINT_ID = "1"  # what the Endpoint's 201 answered: the test puts the real one here

# -- the examples (each with the status a real server answers it: ``x-expected-status``) ---------

ANOTHER_PATIENT_ID = "9b1c1d7e-52a8-4d0e-8f3a-6a0b5e4c2d11"
CONNECTION_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "hl7-fhir-rest",
}


def _example(summary: str, status: int, value: Any) -> dict[str, Any]:
    return {"summary": summary, "value": value, "x-expected-status": status}


def _patient(cht_id: str, family: str, given: str, gender: str, birth: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "cht", "use": "official", "value": cht_id}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth,
    }


def _service_request(cht_id: str, reason: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "intent": "order",
        "status": "active",
        "subject": {"reference": f"Patient/{cht_id}"},
        "requester": {"reference": f"Organization/{ORGANIZATION_IDENTIFIER}"},
        "reasonCode": [{"text": reason}],
    }


ENDPOINT_EXAMPLES = {
    "callback": _example(
        "The requesting system's callback (a FHIR base)",
        201,
        {
            "resourceType": "Endpoint",
            "identifier": [{"system": "official", "value": "athena-callback"}],
            "status": "active",
            "connectionType": CONNECTION_TYPE,
            "payloadType": [{"text": "Encounter"}],
            "address": "https://emr.example.org/fhir-callback",
        },
    )
}
ORGANIZATION_EXAMPLES = {
    "facility": _example(
        "The requesting facility, pointing at its Endpoint (put the id the Endpoint's 201 answered)",
        201,
        {
            "resourceType": "Organization",
            "identifier": [{"system": "official", "value": ORGANIZATION_IDENTIFIER}],
            "name": "Athena Health Centre",
            "endpoint": [{"reference": f"Endpoint/{EXAMPLE_ENDPOINT_ID}"}],
        },
    )
}
PATIENT_EXAMPLES = {
    "cht-push": _example(
        "A patient as the CHT's outbound push sends it",
        201,
        _patient(CHT_PATIENT_ID, "Banda", "Grace", "female", "1990-04-01"),
    ),
    "another": _example(
        "A second patient", 201, _patient(ANOTHER_PATIENT_ID, "Phiri", "Joseph", "male", "1985-11-23")
    ),
}
SERVICE_REQUEST_EXAMPLES = {
    "one": _example(
        "One follow-up: 201 with its Subscription", 201, _service_request(CHT_PATIENT_ID, "Missed ART refill")
    ),
    "ltfu-list": _example(
        "An LTFU list (a batch Bundle): 200 with a batch-response, one entry per patient",
        200,
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "resource": _service_request(ANOTHER_PATIENT_ID, "Missed clinic visit"),
                    "request": {"method": "POST", "url": "ServiceRequest"},
                },
                {
                    "resource": _service_request(CHT_PATIENT_ID, "Missed ART refill"),
                    "request": {"method": "POST", "url": "ServiceRequest"},
                },
            ],
        },
    ),
}
REVOKE_EXAMPLES = {
    "revoke": _example(
        "Revoke: the ServiceRequest with status revoked",
        200,
        {"resourceType": "ServiceRequest", "status": "revoked"},
    )
}
CANCEL_EXAMPLES = {
    "reason": _example(
        "Cancel, with a reason the CHT shows",
        200,
        {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "Patient came back"}]},
    )
}
ENCOUNTER_EXAMPLES = {
    "cht-push": _example(
        "A CHW's answer as the CHT's outbound push sends it (without basedOn it completes every open "
        "follow-up of the patient; the shipped CHT configuration adds basedOn ServiceRequest/<id>)",
        201,
        {
            "resourceType": "Encounter",
            "identifier": [
                {"system": "cht", "value": CHT_PATIENT_ID},
                {"system": "cht-report", "value": "f1a2b3c4-report-0001"},
            ],
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
            "type": [{"text": "Community health worker follow-up"}],
            "subject": {"reference": f"Patient/?identifier={CHT_PATIENT_ID}"},
            "participant": [{"type": [{"text": "Community health worker"}]}],
            "period": {"start": "2026-03-02T09:30:00Z", "end": "2026-03-02T09:30:00Z"},
        },
    )
}
