"""/mediator/, /mediator/endpoint, /mediator/organization, /mediator/patient: shapes, rules, dedup."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.ltfu.conftest import (
    CALLBACK,
    endpoint_body,
    fhir_all,
    organization_body,
    patient_body,
)


async def test_status_answers_like_the_reference(client: httpx.AsyncClient) -> None:
    res = await client.get("/mediator/")
    assert res.status_code == 200
    body = res.json()
    assert body["status"] == "success"
    assert body["osuptime"] > 0
    assert body["processuptime"] >= 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/mediator/"),
        ("POST", "/mediator/endpoint"),
        ("POST", "/mediator/organization"),
        ("POST", "/mediator/patient"),
        ("POST", "/mediator/service-request"),
        ("PUT", "/mediator/service-request/1"),
        ("POST", "/mediator/service-request/1/$cancel"),
        ("POST", "/mediator/encounter"),
    ],
)
async def test_every_route_needs_credentials(client: httpx.AsyncClient, method: str, path: str) -> None:
    res = await client.request(method, path, json={}, auth=("interop-client", "wrong"))
    assert res.status_code == 401
    assert res.headers["WWW-Authenticate"].startswith("Basic")
    assert res.json()["resourceType"] == "OperationOutcome"
    res = await client.request(method, path, json={}, auth=None, headers={"Authorization": ""})
    assert res.status_code == 401


async def test_endpoint_created_then_deduplicated_by_identifier(client: httpx.AsyncClient) -> None:
    res = await client.post("/mediator/endpoint", json=endpoint_body())
    assert res.status_code == 201
    created = res.json()
    assert created["resourceType"] == "Endpoint"
    assert created["address"] == CALLBACK
    assert created["status"] == "active"
    assert res.headers["Location"].endswith(f"/fhir/Endpoint/{created['id']}")

    moved = endpoint_body(address="https://emr.example.org/new-callback")
    res = await client.post("/mediator/endpoint", json=moved)
    assert res.status_code == 200
    assert res.json()["id"] == created["id"]
    assert res.json()["address"] == "https://emr.example.org/new-callback"
    assert len(await fhir_all(client, "Endpoint")) == 1


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"connectionType": {"system": "x", "code": "hl7-fhir-rest"}}, "connectionType.system"),
        ({"identifier": []}, "exactly one item"),
        ({"address": "http://127.0.0.1:8080/cb"}, "private or loopback"),
        ({"address": "file:///etc/passwd"}, "http or https"),
    ],
)
async def test_endpoint_rejected_with_an_outcome_and_nothing_written(
    client: httpx.AsyncClient, change: dict[str, object], fragment: str
) -> None:
    res = await client.post("/mediator/endpoint", json={**endpoint_body(), **change})
    assert res.status_code == 400
    outcome = res.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert fragment in outcome["issue"][0]["diagnostics"]
    assert await fhir_all(client, "Endpoint") == []


async def test_malformed_json_is_a_400(client: httpx.AsyncClient) -> None:
    res = await client.post(
        "/mediator/endpoint", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert res.status_code == 400
    assert "not valid JSON" in res.json()["issue"][0]["diagnostics"]


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, object]:
    return getattr(request, "param", {})


@pytest.mark.parametrize("settings_overrides", [{"ALLOW_PRIVATE_CALLBACKS": True}], indirect=True)
async def test_private_callback_allowed_by_configuration(client: httpx.AsyncClient) -> None:
    res = await client.post("/mediator/endpoint", json=endpoint_body(address="http://127.0.0.1:8080/cb"))
    assert res.status_code == 201


async def test_organization_with_reference_name_array(client: httpx.AsyncClient) -> None:
    ep = (await client.post("/mediator/endpoint", json=endpoint_body())).json()
    res = await client.post("/mediator/organization", json=organization_body(ep["id"], name=["athena"]))
    assert res.status_code == 201
    org = res.json()
    assert org["name"] == "athena"
    assert org["endpoint"] == [{"reference": f"Endpoint/{ep['id']}"}]

    again = await client.post(
        "/mediator/organization", json=organization_body(ep["id"], name="Athena Clinic")
    )
    assert again.status_code == 200
    assert again.json()["id"] == org["id"]
    assert again.json()["name"] == "Athena Clinic"
    assert len(await fhir_all(client, "Organization")) == 1


async def test_organization_rules(client: httpx.AsyncClient) -> None:
    res = await client.post("/mediator/organization", json=organization_body("404404"))
    assert res.status_code == 400
    assert "Endpoint/404404 not found" in res.json()["issue"][0]["diagnostics"]
    res = await client.post("/mediator/organization", json={"name": "x", "endpoint": []})
    assert res.status_code == 400
    assert "exactly one item" in res.json()["issue"][0]["diagnostics"]
    assert await fhir_all(client, "Organization") == []


async def test_patient_upserted_by_cht_id(client: httpx.AsyncClient) -> None:
    cht_id = str(uuid.uuid4())
    res = await client.post("/mediator/patient", json=patient_body(cht_id))
    assert res.status_code == 201
    first = res.json()
    assert first["identifier"][0] == {"system": "cht", "value": cht_id}

    res = await client.post("/mediator/patient", json=patient_body(cht_id, family="Smith"))
    assert res.status_code == 200
    assert res.json()["id"] == first["id"]
    stored = await fhir_all(client, "Patient", identifier=f"cht|{cht_id}")
    assert len(stored) == 1
    assert stored[0]["name"][0]["family"] == "Smith"


async def test_patient_rules_and_nothing_written(client: httpx.AsyncClient) -> None:
    body = patient_body()
    body["identifier"][0]["value"] = "not-a-uuid"
    res = await client.post("/mediator/patient", json=body)
    assert res.status_code == 400
    assert "valid GUID" in res.json()["issue"][0]["diagnostics"]
    body = patient_body()
    body["name"][0]["given"] = ["Jane", "Ann"]
    res = await client.post("/mediator/patient", json=body)
    assert res.status_code == 400
    assert await fhir_all(client, "Patient") == []
