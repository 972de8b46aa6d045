"""``fhir/validation.py``'s ``_KnownValid``: a ServiceRequest that differs from one the R4B model
passed only in its references and identifier values skips the model, and answers as it would."""

from __future__ import annotations

import copy
import random
import typing
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from cht_interop.fhir import validation
from cht_interop.fhir.errors import InvalidRequest
from cht_interop.fhir.validation import check_resource


def service_request(patient: str = "Patient/p-1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "intent": "order",
        "status": "active",
        "subject": {"reference": patient},
        "requester": {"reference": "Organization/org-1"},
        "identifier": [{"system": "http://emr.example.org/sr", "value": f"sr-{patient}"}],
        "reasonCode": [{"text": "Missed ART refill"}],
    }
    body.update(extra)
    return body


@pytest.fixture
def model_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The resource types the model was run on, from here on (and nothing known valid yet)."""
    runs: list[str] = []
    real = validation._model

    class Counted:
        def __init__(self, rtype: str) -> None:
            self.model = real(rtype)
            self.rtype = rtype

        def model_validate(self, resource: Any) -> Any:
            runs.append(self.rtype)
            return self.model.model_validate(resource)

    monkeypatch.setattr(validation, "_model", Counted)
    if hasattr(validation, "_KnownValid"):
        monkeypatch.setattr(validation, "_KNOWN_VALID", validation._KnownValid())
    return runs


def test_a_request_differing_only_in_references_and_identifier_values_skips_the_model(
    model_runs: list[str],
) -> None:
    check_resource(service_request("Patient/p-1"), "ServiceRequest")
    second = service_request("Patient/p-2", requester={"reference": "Organization/org-2"})
    assert check_resource(copy.deepcopy(second), "ServiceRequest") == second
    assert model_runs == ["ServiceRequest"]  # the second one did not run it


def test_any_other_difference_runs_the_model(model_runs: list[str]) -> None:
    check_resource(service_request(), "ServiceRequest")
    check_resource(service_request(priority="urgent"), "ServiceRequest")
    check_resource(service_request(reasonCode=[{"text": "Missed visit"}]), "ServiceRequest")
    check_resource(service_request("Patient/p-9", priority="urgent"), "ServiceRequest")  # known now
    assert model_runs == ["ServiceRequest"] * 3


def test_repairs_and_refusals_are_the_models_after_a_clean_pass(model_runs: list[str]) -> None:
    check_resource(service_request(), "ServiceRequest")
    # an empty reference is not a varying string: the model runs, and the repair drops it
    repaired = check_resource(service_request(""), "ServiceRequest")
    assert repaired["subject"] == {}
    with pytest.raises(InvalidRequest, match="authoredOn"):
        check_resource(service_request(authoredOn="not-a-date"), "ServiceRequest")
    with pytest.raises(InvalidRequest, match="status"):
        check_resource(service_request(status="bogus"), "ServiceRequest")  # the codes: always checked
    # a resource that needed a repair is never taken as known valid
    check_resource(service_request(unknown="dropped"), "ServiceRequest")
    again = check_resource(service_request(unknown="dropped"), "ServiceRequest")
    assert "unknown" not in again
    check_resource(service_request("Patient/p-9"), "ServiceRequest")  # still known valid
    # 1, 2 (a pass, the repair, a pass), 1, 1, then 2 and 2 again: a repaired one is not kept
    assert len(model_runs) == 1 + 2 + 1 + 1 + 2 + 2


def _element_type(model: Any, name: str) -> Any:
    annotation = model.model_fields[name].annotation
    for arg in typing.get_args(annotation) or (annotation,):
        inner = typing.get_args(arg) or (arg,)
        return inner[0]
    return annotation


def test_the_varying_paths_are_strings_in_the_r4b_model() -> None:
    """What the device rests on: each path it sets to a placeholder is a FHIR ``string``."""
    for rtype, (references, identifiers) in validation._KnownValid.STRING_PATHS.items():
        model = get_fhir_model_class(rtype)
        for name in references:
            assert _element_type(model, name).__name__ == "ReferenceType", (rtype, name)
        for name in identifiers:
            assert "IdentifierType" in str(model.model_fields[name].annotation), (rtype, name)
    reference = get_fhir_model_class("Reference").model_fields["reference"]
    identifier_value = get_fhir_model_class("Identifier").model_fields["value"]
    for field in (reference, identifier_value):
        assert "String()" in str(field.annotation), field.annotation


def test_the_model_passes_any_string_with_a_printable_character() -> None:
    """The verdict the device reuses: whatever else a varying string holds, the model passes it."""
    model = get_fhir_model_class("ServiceRequest")
    rng = random.Random(7)
    alphabet = [chr(c) for c in (*range(0x80), 0xA0, 0x85, 0x2028, 0x3000, 0xFEFF, 0x1F600)]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        text += rng.choice("!/~aZ09.-")
        body = service_request(text)
        body["identifier"][0]["value"] = text[::-1]
        assert validation._varying(text)
        model.model_validate(body)
