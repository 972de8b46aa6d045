"""The reference mediator's request rules, one by one (no store involved)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cht_interop.fhir.errors import InvalidRequest
from cht_interop.ltfu import validation as V

PATIENT_ID = "3f1c7c1e-6c1a-4a55-9b8f-0e3c0b5d1a22"


def endpoint(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Endpoint",
        "identifier": [{"system": "official", "value": "callback-1"}],
        "connectionType": {"system": V.ENDPOINT_CONNECTION_SYSTEM, "code": "hl7-fhir-rest"},
        "address": "https://emr.example.org/callback",
    }
    body.update(changes)
    return body


def patient(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": "cht", "value": PATIENT_ID}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1990-04-01",
    }
    body.update(changes)
    return body


def service_request(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "intent": "order",
        "status": "active",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "requester": {"reference": "Organization/org-1"},
    }
    body.update(changes)
    return body


def encounter(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Encounter",
        "identifier": [{"system": "cht", "value": PATIENT_ID}],
        "status": "finished",
        "class": "outpatient",
        "type": [{"text": "Community health worker visit"}],
        "subject": {"reference": f"Patient/?identifier={PATIENT_ID}"},
        "participant": [{"type": [{"text": "Community health worker"}]}],
    }
    body.update(changes)
    return body


def rejects(fn: Any, body: Any, fragment: str, **kwargs: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        fn(body, **kwargs)
    assert fragment in err.value.diagnostics
    assert err.value.to_outcome()["resourceType"] == "OperationOutcome"
    return err.value


# -- Endpoint


def test_endpoint_valid_gets_r4_defaults() -> None:
    stored = V.validate_endpoint(endpoint(), allow_private=False)
    assert stored["status"] == "active"
    assert stored["payloadType"]
    assert stored["address"] == "https://emr.example.org/callback"


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"connectionType": {"system": "other", "code": "hl7-fhir-rest"}}, '"connectionType.system" must be'),
        ({"connectionType": {"system": V.ENDPOINT_CONNECTION_SYSTEM, "code": "x"}}, '"connectionType.code"'),
        ({"connectionType": None}, '"connectionType" is required'),
        ({"identifier": []}, "exactly one item"),
        ({"identifier": [{"value": "a"}, {"value": "b"}]}, "exactly one item"),
        ({"identifier": None}, '"identifier" is required'),
        ({"address": ""}, '"address" is required'),
        ({"address": "ftp://emr.example.org/x"}, "http or https"),
        ({"address": "https://user:pw@emr.example.org/x"}, "credentials"),
        ({"resourceType": "Patient"}, '"resourceType" must be [Endpoint]'),
    ],
)
def test_endpoint_rules(changes: dict[str, Any], fragment: str) -> None:
    rejects(V.validate_endpoint, endpoint(**changes), fragment, allow_private=False)


@pytest.mark.parametrize(
    "address",
    [
        "http://127.0.0.1:9000/cb",
        "http://localhost/cb",
        "http://10.1.2.3/cb",
        "http://192.168.0.10/cb",
        "http://[::1]/cb",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/cb",
        "http://printer.local/cb",
        "http://intranet/cb",
    ],
)
def test_private_callbacks_refused_unless_allowed(address: str) -> None:
    rejects(V.validate_endpoint, endpoint(address=address), "private or loopback", allow_private=False)
    assert V.validate_endpoint(endpoint(address=address), allow_private=True)["address"] == address


# -- Organization


def test_organization_name_array_stored_as_string() -> None:
    body = {
        "name": ["athena"],
        "endpoint": [{"reference": "Endpoint/42"}],
        "identifier": [{"value": "org-1"}],
    }
    stored, endpoint_id = V.validate_organization(body)
    assert stored["name"] == "athena"
    assert endpoint_id == "42"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "a"}, '"endpoint" is required'),
        ({"name": "a", "endpoint": []}, "exactly one item"),
        (
            {"name": "a", "endpoint": [{"reference": "Endpoint/1"}, {"reference": "Endpoint/2"}]},
            "exactly one",
        ),
        ({"name": "a", "endpoint": [{"reference": "Organization/1"}]}, "Endpoint/<id>"),
        ({"name": ["a", "b"], "endpoint": [{"reference": "Endpoint/1"}]}, "array of one string"),
        ({"name": 5, "endpoint": [{"reference": "Endpoint/1"}]}, '"name" must be a string'),
    ],
)
def test_organization_rules(body: dict[str, Any], fragment: str) -> None:
    rejects(V.validate_organization, body, fragment)


# -- Patient


def test_patient_valid_and_cht_id() -> None:
    stored, cht_id = V.validate_patient(patient())
    assert cht_id == PATIENT_ID
    assert stored["resourceType"] == "Patient"


def test_patient_without_birth_date_is_accepted() -> None:
    body = patient()
    del body["birthDate"]
    assert V.validate_patient(body)[1] == PATIENT_ID


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"identifier": []}, "at least 1 item"),
        ({"identifier": [{"system": "other", "value": PATIENT_ID}]}, "must be [cht]"),
        ({"identifier": [{"system": "cht", "value": "not-a-uuid"}]}, "valid GUID"),
        ({"name": []}, "at least 1 item"),
        ({"name": [{"given": ["Jane"]}]}, '"name[0].family" is required'),
        ({"name": [{"family": "Doe", "given": ["Jane", "Ann"]}]}, "exactly one item"),
        ({"name": [{"family": "Doe"}]}, "exactly one item"),
        ({"gender": None}, '"gender" is required'),
        ({"gender": "banana"}, '"gender" must be one of'),
        ({"birthDate": ""}, "not allowed to be empty"),
        ({"birthDate": "yesterday"}, "must be a date"),
    ],
)
def test_patient_rules(changes: dict[str, Any], fragment: str) -> None:
    rejects(V.validate_patient, patient(**changes), fragment)


# -- ServiceRequest


def test_service_request_refs() -> None:
    parsed = V.validate_service_request(service_request())
    assert parsed.patient_ref == PATIENT_ID
    assert parsed.requester_ref == "org-1"


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"intent": None}, '"intent" is required'),
        ({"intent": "wish"}, '"intent" must be one of'),
        ({"status": None}, '"status" is required'),
        ({"status": "done"}, '"status" must be one of'),
        ({"status": "draft"}, "must be [active]"),
        ({"subject": None}, '"subject" is required'),
        ({"subject": {"reference": f"Group/{PATIENT_ID}"}}, "Patient/<CHT id>"),
        ({"subject": {"reference": f"Patient?identifier={PATIENT_ID}"}}, "Patient/<CHT id>"),
        ({"requester": None}, '"requester" is required'),
        ({"requester": {"reference": "Practitioner/1"}}, "Organization/<organization identifier>"),
        ({"requester": {"identifier": {"value": "org-1"}}}, '"requester" is required'),
    ],
)
def test_service_request_rules(changes: dict[str, Any], fragment: str) -> None:
    body = service_request(**changes)
    rejects(V.validate_service_request, body, fragment)


def test_revoke_only() -> None:
    V.validate_revoke({"resourceType": "ServiceRequest", "id": "7", "status": "revoked"}, "7")
    rejects(
        V.validate_revoke,
        {"resourceType": "ServiceRequest", "status": "completed"},
        "must be [revoked]",
        service_request_id="7",
    )
    rejects(V.validate_revoke, {"id": "8", "status": "revoked"}, "must match", service_request_id="7")


# -- Encounter


def test_encounter_reference_shape_normalised() -> None:
    parsed = V.validate_encounter(encounter())
    assert parsed.resource["class"] == {"system": V.V3_ACT_CODE, "code": "AMB", "display": "ambulatory"}
    assert parsed.patient_cht_id == PATIENT_ID
    assert parsed.subject_patient_id is None
    assert parsed.report_id is None


def test_encounter_contract_shape() -> None:
    body = encounter(
        identifier=[{"system": "cht", "value": PATIENT_ID}, {"system": "cht-report", "value": "report-1"}],
        **{"class": {"system": V.V3_ACT_CODE, "code": "HH"}},
        basedOn=[{"reference": "ServiceRequest/12"}],
        subject={"reference": "Patient/5"},
    )
    parsed = V.validate_encounter(body)
    assert parsed.report_id == "report-1"
    assert parsed.service_request_id == "12"
    assert parsed.subject_patient_id == "5"
    assert parsed.resource["class"]["code"] == "HH"


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"identifier": []}, "exactly one item with system [cht]"),
        (
            {"identifier": [{"system": "cht", "value": PATIENT_ID}, {"system": "cht", "value": PATIENT_ID}]},
            "exactly one",
        ),
        ({"identifier": [{"system": "cht", "value": "x"}]}, "valid GUID"),
        ({"status": None}, '"status" is required'),
        ({"status": "wrong_status"}, 'Code "wrong_status" not found in value set'),
        ({"class": None}, '"class" is required'),
        ({"subject": None}, '"subject" is required'),
        (
            {"subject": {"reference": "Patient/?identifier=3f1c7c1e-0000-4a55-9b8f-0e3c0b5d1a22"}},
            "another patient",
        ),
        ({"type": []}, '"type" must contain exactly one item'),
        ({"type": [{"text": "a"}, {"text": "b"}]}, '"type" must contain exactly one item'),
        ({"participant": []}, '"participant" must contain exactly one item'),
    ],
)
def test_encounter_rules(changes: dict[str, Any], fragment: str) -> None:
    rejects(V.validate_encounter, encounter(**changes), fragment)


def test_validators_do_not_mutate_input() -> None:
    body = encounter()
    before = copy.deepcopy(body)
    V.validate_encounter(body)
    assert body == before
