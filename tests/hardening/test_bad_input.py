"""Bad input that used to crash the server (500): each is now a 4xx OperationOutcome, and nothing
is written. One case per report of issue 15, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from cht_interop.kit.json_body import MAX_JSON_DEPTH
from cht_interop.services import Services
from tests.hardening.conftest import assert_outcome, row_counts
from tests.ltfu.conftest import encounter_body, patient_body, service_request_body

CHT_ID = str(uuid.uuid4())
SR = service_request_body(CHT_ID)


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def nested_extensions(levels: int) -> dict[str, Any]:
    ext: dict[str, Any] = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(levels):
        ext = {"url": "http://example.org/branch", "extension": [ext]}
    return ext


def nested_arrays(levels: int) -> Any:
    value: Any = "Jane"
    for _ in range(levels):
        value = [value]
    return value


CASES: dict[str, tuple[str, str, Any]] = {
    "sr-intent-list": ("POST", "/mediator/service-request", {**SR, "intent": ["order"]}),
    "sr-status-object": ("POST", "/mediator/service-request", {**SR, "status": {}}),
    "sr-subject-reference-list": (
        "POST",
        "/mediator/service-request",
        {**SR, "subject": {"reference": ["Patient/x"]}},
    ),
    "patient-gender-list": ("POST", "/mediator/patient", {**patient_body(CHT_ID), "gender": ["female"]}),
    "encounter-status-list": (
        "POST",
        "/mediator/encounter",
        {**encounter_body(CHT_ID), "status": ["finished"]},
    ),
    "cancel-parameter-number": (
        "POST",
        "/mediator/service-request/123/$cancel",
        {"resourceType": "Parameters", "parameter": 5},
    ),
    "transaction-method-list": (
        "POST",
        "/fhir",
        bundle(
            "transaction",
            {"resource": {"resourceType": "Patient"}, "request": {"method": ["POST"], "url": "Patient"}},
        ),
    ),
    "extensions-126-deep": (
        "POST",
        "/fhir/Patient",
        {"resourceType": "Patient", "extension": [nested_extensions(126)]},
    ),
    "given-300-deep": (
        "POST",
        "/fhir/Patient",
        {"resourceType": "Patient", "name": [{"given": nested_arrays(300)}]},
    ),
    "mediator-300-deep": (
        "POST",
        "/mediator/patient",
        {**patient_body(CHT_ID), "name": [{"given": nested_arrays(300)}]},
    ),
    "contained-unknown-type": (
        "POST",
        "/fhir/Patient",
        {"resourceType": "Patient", "contained": [{"resourceType": "Nope", "id": "x"}]},
    ),
    "contained-type-number": (
        "POST",
        "/fhir/Patient",
        {"resourceType": "Patient", "contained": [{"resourceType": 5}]},
    ),
    "url-number": (
        "POST",
        "/fhir/Subscription",
        {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "r",
            "criteria": "Encounter?status=finished",
            "channel": {"type": "rest-hook", "endpoint": 5},
        },
    ),
    "endpoint-address-list": (
        "PUT",
        "/fhir/Endpoint/e1",
        {"resourceType": "Endpoint", "id": "e1", "address": ["x"]},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_wrong_json_type_is_a_4xx_and_writes_nothing(
    client: httpx.AsyncClient, services: Services, case: str
) -> None:
    method, path, body = CASES[case]
    before = await row_counts(services)
    res = await client.request(method, path, json=body)
    assert_outcome(res)
    assert await row_counts(services) == before


async def test_a_wrong_entry_in_an_ltfu_list_is_its_own_4xx_entry(client: httpx.AsyncClient) -> None:
    """In a list, the bad entry is answered in its batch-response entry; the list itself is 200."""
    res = await client.post(
        "/mediator/service-request", json=bundle("batch", {"resource": {**SR, "status": {}}})
    )
    assert res.status_code == 200, res.text
    (entry,) = res.json()["entry"]
    assert entry["response"]["status"].startswith("400")
    assert entry["response"]["outcome"]["issue"][0]["expression"] == ["ServiceRequest.status"]


async def test_a_wrong_method_in_a_batch_is_that_entrys_400(client: httpx.AsyncClient) -> None:
    entry = {"resource": {"resourceType": "Patient"}, "request": {"method": {"x": 1}, "url": "Patient"}}
    res = await client.post("/fhir", json=bundle("batch", entry))
    assert res.status_code == 200, res.text
    assert res.json()["entry"][0]["response"]["status"] == "400 Bad Request"


async def test_the_depth_limit_is_where_the_docs_say(client: httpx.AsyncClient) -> None:
    """MAX_JSON_DEPTH levels are stored and read back; one more is a 400 naming the limit."""
    # Patient{ extension[ ext{ extension[ ... leaf{ }: 1 + 2 * (levels + 1) levels of nesting
    levels = (MAX_JSON_DEPTH - 1) // 2 - 1
    ok = await client.post(
        "/fhir/Patient", json={"resourceType": "Patient", "extension": [nested_extensions(levels)]}
    )
    assert ok.status_code == 201, ok.text
    read = await client.get(f"/fhir/Patient/{ok.json()['id']}")
    assert read.status_code == 200 and read.json()["extension"] == ok.json()["extension"]
    deeper = {
        "resourceType": "Patient",
        "extension": [nested_extensions(levels)],
        "name": [{"given": nested_arrays(MAX_JSON_DEPTH - 2)}],
    }
    body = assert_outcome(await client.post("/fhir/Patient", json=deeper), 400)
    assert f"deeper than {MAX_JSON_DEPTH} levels" in body["issue"][0]["diagnostics"]


async def test_a_patch_cannot_nest_a_resource_past_the_limit(client: httpx.AsyncClient) -> None:
    """Each JSON Patch document is within the limit, but applied to a deep resource it would not be."""
    half = (MAX_JSON_DEPTH - 1) // 2 - 3
    created = await client.post(
        "/fhir/Patient", json={"resourceType": "Patient", "extension": [nested_extensions(half)]}
    )
    assert created.status_code == 201, created.text
    path = "/extension/0" + "/extension/0" * half
    ops = [{"op": "add", "path": path + "/extension", "value": [nested_extensions(half)]}]
    res = await client.patch(
        f"/fhir/Patient/{created.json()['id']}",
        content=httpx.Request("POST", "/", json=ops).content,
        headers={"content-type": "application/json-patch+json"},
    )
    assert (
        "Patient nests objects and arrays deeper than" in assert_outcome(res, 400)["issue"][0]["diagnostics"]
    )
    assert (await client.get(f"/fhir/Patient/{created.json()['id']}")).json()["meta"]["versionId"] == "1"
