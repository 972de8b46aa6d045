"""The shipped outbound push emits valid FHIR R4 (docs/cht-contract.md §5).

The mappings are evaluated the way Sentinel does (cht-core outbound.js): ``relevant_to`` and every ``expr``
as JavaScript with only ``doc`` in scope (V8 through mini-racer), a bare string as a required
``doc.`` path, optional values left out when undefined, dotted keys nesting. The payloads are then
parsed by the FHIR models (R4B: the same Patient and Encounter elements as R4).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient
from py_mini_racer import MiniRacer

from cht_interop.cht.config_loader import load_app_config
from cht_interop.ltfu.validation import validate_encounter

OUTBOUND = load_app_config().settings["outbound"]
_UNDEFINED = "\x00undefined"


class MappingError(Exception):
    pass


def _js(doc: dict[str, Any], expr: str) -> Any:
    ctx = MiniRacer()
    source = (
        f"var doc = {json.dumps(doc)};"
        f"(function () {{ var v = ({expr});"
        f" return v === undefined ? {json.dumps(_UNDEFINED)} : JSON.stringify(v); }})()"
    )
    raw = ctx.eval(source)
    return _UNDEFINED if raw == _UNDEFINED else json.loads(raw)


def is_relevant(name: str, doc: dict[str, Any]) -> bool:
    return bool(_js(doc, OUTBOUND[name]["relevant_to"]))


def push_payload(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for dest, spec in OUTBOUND[name]["mapping"].items():
        if isinstance(spec, str):
            expr, optional = spec, False
        else:
            expr, optional = spec.get("expr") or spec["path"], bool(spec.get("optional"))
        value = _js(doc, expr)
        if value == _UNDEFINED:
            if optional:
                continue
            raise MappingError(f"{name}/{dest} evaluated to undefined")
        target = payload
        *parents, leaf = dest.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return payload


PATIENT_UUID = "3f1c7c1e-6c1a-4a55-9b8f-0e3c0b5d1a22"  # the mediator takes CHT ids that are UUIDs

PATIENT = {
    "_id": "a1b2c3",
    "type": "person",
    "role": "patient",
    "contact_type": "patient",
    "name": "Jane Patient",
    "sex": "female",
    "date_of_birth": "1990-04-01",
    "parent": {"_id": "household_1"},
    "reported_date": 1764000000000,
}

REPORT = {
    "_id": "report-9",
    "type": "data_record",
    "form": "interop_follow_up",
    "content_type": "xml",
    "reported_date": 1764072000000,
    "contact": {"_id": "chw_contact", "parent": {"_id": "chw_area"}},
    "fields": {
        "patient_uuid": "a1b2c3",
        "patient_id": "a1b2c3",
        "source_id": "record-1",
        "service_request_id": "sr-77",
        "outcome": "returned_to_care",
        "method": "visit",
        "notes": "Back on treatment",
        "inputs": {"source": "task", "contact": {"_id": PATIENT_UUID, "name": "Jane Patient"}},
        "meta": {"instanceID": "uuid:1"},
    },
}


def test_a_patient_is_pushed_as_a_valid_patient() -> None:
    assert is_relevant("FHIR_patient", PATIENT)
    payload = push_payload("FHIR_patient", PATIENT)

    assert payload == {
        "resourceType": "Patient",
        "identifier": [{"system": "cht", "use": "official", "value": "a1b2c3"}],
        "name": [{"use": "official", "family": "Jane Patient", "given": ["Jane Patient"]}],
        "gender": "female",
        "birthDate": "1990-04-01",
    }
    Patient.model_validate(payload)


@pytest.mark.parametrize(
    ("changes", "gender", "birth_date"),
    [
        ({"sex": None, "date_of_birth": None}, "unknown", None),
        ({"sex": "Male", "date_of_birth": "1990"}, "male", "1990"),
        ({"sex": "x", "date_of_birth": "01/04/1990"}, "unknown", None),
    ],
)
def test_a_patient_lacking_sex_or_birth_date_is_still_pushed(
    changes: dict[str, Any], gender: str, birth_date: str | None
) -> None:
    doc = {key: value for key, value in {**PATIENT, **changes}.items() if value is not None}
    payload = push_payload("FHIR_patient", doc)

    assert payload["gender"] == gender
    assert payload.get("birthDate") == birth_date
    Patient.model_validate(payload)


def test_the_short_name_is_the_given_name_when_present() -> None:
    payload = push_payload("FHIR_patient", {**PATIENT, "short_name": "Jane"})
    assert payload["name"][0]["given"] == ["Jane"]


def test_only_patients_are_pushed_as_patients() -> None:
    assert not is_relevant("FHIR_patient", {**PATIENT, "role": "chw"})
    assert not is_relevant("FHIR_patient", REPORT)
    assert not is_relevant("FHIR_encounter", PATIENT)


def test_the_completed_follow_up_is_pushed_as_a_valid_encounter() -> None:
    assert is_relevant("FHIR_encounter", REPORT)
    payload = push_payload("FHIR_encounter", REPORT)

    assert payload == {
        "resourceType": "Encounter",
        "identifier": [{"system": "cht", "value": "a1b2c3"}, {"system": "cht-report", "value": "report-9"}],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
        "type": [{"text": "Community health worker follow-up"}],
        "subject": {"reference": "Patient/?identifier=a1b2c3"},
        "participant": [{"type": [{"text": "Community health worker"}]}],
        "period": {"start": "2025-11-25T12:00:00.000Z", "end": "2025-11-25T12:00:00.000Z"},
        "basedOn": [{"reference": "ServiceRequest/sr-77"}],
        "extension": [
            {
                "url": "urn:cht-interop:ltfu-outcome",
                "valueCodeableConcept": {
                    "coding": [
                        {"system": "urn:cht-interop:CodeSystem/ltfu-outcome", "code": "returned_to_care"}
                    ],
                    "text": "Found and returning to care",
                },
            }
        ],
        "reasonCode": [{"text": "Back on treatment"}],
    }
    Encounter.model_validate(payload)


@pytest.mark.parametrize("method", ["phone", "sms"])
def test_a_remote_follow_up_is_a_virtual_encounter(method: str) -> None:
    doc = {**REPORT, "fields": {**REPORT["fields"], "method": method}}
    assert push_payload("FHIR_encounter", doc)["class"]["code"] == "VR"


def test_a_sparse_report_still_makes_a_valid_encounter() -> None:
    # e.g. a report written before the form had these fields, or by the reference's form
    doc = {**REPORT, "fields": {"inputs": {"source": "task", "contact": {"_id": "a1b2c3"}}}}
    payload = push_payload("FHIR_encounter", doc)

    assert payload["identifier"][0] == {"system": "cht", "value": "a1b2c3"}
    assert "basedOn" not in payload and "extension" not in payload and "reasonCode" not in payload
    Encounter.model_validate(payload)


def test_outcome_labels_match_the_app_form_choices() -> None:
    for code, label in [
        ("refused", "Found and refused"),
        ("not_located", "Not located"),
        ("moved_away", "Moved away"),
        ("died", "Died"),
        ("other", "Other"),
    ]:
        doc = {**REPORT, "fields": {**REPORT["fields"], "outcome": code}}
        concept = push_payload("FHIR_encounter", doc)["extension"][0]["valueCodeableConcept"]
        assert concept["text"] == label
        assert concept["coding"][0]["code"] == code


# Every part of the report another tool (``/medic/_bulk_docs``) may leave out, one at a time.
OPTIONAL_PARTS = [
    "reported_date",
    "contact",
    "content_type",
    *(f"fields.{key}" for key in REPORT["fields"]),
]


def _without(doc: dict[str, Any], dotted: str) -> dict[str, Any]:
    copy = json.loads(json.dumps(doc))
    *parents, leaf = dotted.split(".")
    target = copy
    for part in parents:
        target = target[part]
    del target[leaf]
    return copy


@pytest.mark.parametrize("missing", OPTIONAL_PARTS)
def test_a_report_lacking_any_optional_part_is_still_pushed_and_accepted(missing: str) -> None:
    ids = {"patient_uuid": PATIENT_UUID, "patient_id": PATIENT_UUID}
    doc = _without({**REPORT, "fields": {**REPORT["fields"], **ids}}, missing)
    assert is_relevant("FHIR_encounter", doc)
    payload = push_payload("FHIR_encounter", doc)  # a throw here is a push the CHT retries forever

    Encounter.model_validate(payload)
    accepted = validate_encounter(payload)  # what /mediator/encounter checks before storing
    assert accepted.patient_cht_id == PATIENT_UUID
    assert ("period" in payload) == (missing != "reported_date")


@pytest.mark.parametrize(
    "fields",
    [None, {}, {"outcome": "died"}, {"inputs": "not an object"}, {"inputs": {"contact": None}}],
)
def test_a_report_naming_no_patient_is_not_pushed_and_nothing_throws(fields: dict[str, Any] | None) -> None:
    doc = {key: value for key, value in REPORT.items() if key != "fields"}
    if fields is not None:
        doc["fields"] = fields
    assert not is_relevant("FHIR_encounter", doc)
    for spec in OUTBOUND["FHIR_encounter"]["mapping"].values():
        _js(doc, spec["expr"] if isinstance(spec, dict) else spec)  # none throws (a retry re-maps it)


@pytest.mark.parametrize("reported_date", ["not a date", None, "1764072000000"])
def test_an_unreadable_reported_date_leaves_the_period_out(reported_date: Any) -> None:
    payload = push_payload("FHIR_encounter", {**REPORT, "reported_date": reported_date})
    assert "period" not in payload
    Encounter.model_validate(payload)


def test_a_patient_without_a_name_is_still_pushed() -> None:
    doc = {key: value for key, value in PATIENT.items() if key != "name"}
    payload = push_payload("FHIR_patient", doc)
    assert "name" not in payload
    Patient.model_validate(payload)
