"""$validate, _summary and _total over HTTP, with HAPI's answers (see docs/fhir-server.md)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fhir.conftest import patient

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


async def _create(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    r = await client.post(f"/fhir/{body['resourceType']}", json=body)
    assert r.status_code == 201, r.text
    rid: str = r.json()["id"]
    return rid


def _params(resource: dict[str, Any] | None = None, mode: str | None = None) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    if resource is not None:
        params.append({"name": "resource", "resource": resource})
    if mode is not None:
        params.append({"name": "mode", "valueCode": mode})
    return {"resourceType": "Parameters", "parameter": params}


async def _count(client: httpx.AsyncClient, rtype: str) -> int:
    total: int = (await client.get(f"/fhir/{rtype}", params={"_summary": "count"})).json()["total"]
    return total


async def test_validate_valid_resource_writes_nothing(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir/Patient/$validate", json=patient("val-1"))
    assert r.status_code == 200, r.text
    assert r.json()["issue"] == [
        {
            "severity": "information",
            "code": "informational",
            "diagnostics": "No issues detected during validation",
        }
    ]
    r = await client.post("/fhir/Patient/$validate", json=_params(patient("val-1"), "create"))
    assert r.status_code == 200, r.text
    assert await _count(client, "Patient") == 0


async def test_validate_invalid_is_412_with_every_issue(client: httpx.AsyncClient) -> None:
    bad = {"resourceType": "Observation", "status": "bogus", "foo": 1, "valueQuantity": {"value": "x"}}
    r = await client.post("/fhir/Observation/$validate", json=bad)
    assert r.status_code == 412, r.text
    issues = r.json()["issue"]
    where = {i["expression"][0] for i in issues}
    # code is mandatory (1..1), foo unknown, the decimal malformed, the status not a known code
    assert {"Observation.code", "Observation.foo", "Observation.valueQuantity.value"} <= where
    assert "Observation.status" in where
    assert all(i["severity"] == "error" for i in issues)
    # a create of the same body would be accepted leniently: $validate is the stricter check
    lenient = {"resourceType": "Observation", "status": "final", "foo": 1}
    assert (await client.post("/fhir/Observation/$validate", json=lenient)).status_code == 412


async def test_validate_modes_and_ids(client: httpx.AsyncClient) -> None:
    body = patient("val-2")
    r = await client.post("/fhir/Patient/$validate", json=_params({**body, "id": "x"}, "create"))
    assert r.status_code == 422 and "HAPI-0997" in r.text
    r = await client.post("/fhir/Patient/$validate", json=_params(body, "update"))
    assert r.status_code == 422 and "HAPI-0998" in r.text
    r = await client.post("/fhir/Patient/$validate", json=_params(None, "create"))
    assert r.status_code == 400 and "HAPI-0992" in r.text
    r = await client.post("/fhir/Patient/$validate", json=_params(body, "delete"))
    assert r.status_code == 400 and "HAPI-0991" in r.text
    r = await client.post("/fhir/Patient/$validate", json=_params(body, "merge"))
    assert r.status_code == 400
    r = await client.post("/fhir/Patient/$validate", json={"resourceType": "Observation", "status": "final"})
    assert r.status_code == 400 and "HAPI-1843" in r.text
    pid = await _create(client, body)
    r = await client.post(f"/fhir/Patient/{pid}/$validate", json=_params({**body, "id": pid}, "update"))
    assert r.status_code == 200, r.text
    r = await client.post(f"/fhir/Patient/{pid}/$validate", json=_params({**body, "id": "other"}, "update"))
    assert r.status_code == 400 and "HAPI-0420" in r.text
    assert (await client.get(f"/fhir/Patient/{pid}/$validate")).status_code == 200  # the stored one
    assert (await client.post("/fhir/Patient/nope/$validate", json=body)).status_code == 404
    assert (await client.get(f"/fhir/Patient/{pid}")).json()["meta"]["versionId"] == "1"


async def test_validate_delete_checks_references(client: httpx.AsyncClient) -> None:
    pid = await _create(client, patient("val-3"))
    r = await client.post(f"/fhir/Patient/{pid}/$validate", json=_params(mode="delete"))
    assert r.status_code == 200 and r.json()["issue"][0]["diagnostics"] == "Ok to delete"
    enc = {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}}
    await _create(client, {**enc, "subject": {"reference": f"Patient/{pid}"}})
    r = await client.post(f"/fhir/Patient/{pid}/$validate", json=_params(mode="delete"))
    assert r.status_code == 409 and "HAPI-0550" in r.text
    assert (await client.get(f"/fhir/Patient/{pid}")).status_code == 200


async def test_other_operations_still_unknown(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir/Patient/$everything", json={})
    assert r.status_code == 400 and "HAPI-0389" in r.text
    r = await client.get("/fhir/Patient/$meta")
    assert r.status_code == 400 and "HAPI-0389" in r.text


async def test_summary_modes_on_search_and_read(client: httpx.AsyncClient) -> None:
    body = {
        **patient("sum-1"),
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
        "maritalStatus": {"text": "single"},
        "gender": "female",
    }
    pid = await _create(client, body)

    async def one(summary: str) -> dict[str, Any]:
        r = await client.get("/fhir/Patient", params={"_id": pid, "_summary": summary})
        assert r.status_code == 200, r.text
        resource: dict[str, Any] = r.json()["entry"][0]["resource"]
        return resource

    full = await one("false")
    assert "maritalStatus" in full and "text" in full and SUBSETTED not in full["meta"].get("tag", [])
    summ = await one("true")
    assert "maritalStatus" not in summ and "text" not in summ  # not summary elements
    assert summ["gender"] == "female" and summ["identifier"] == body["identifier"]
    assert SUBSETTED in summ["meta"]["tag"]
    data = await one("data")
    assert "text" not in data and "maritalStatus" in data and SUBSETTED in data["meta"]["tag"]
    text = await one("text")
    assert set(text) == {"resourceType", "id", "meta", "text"} and SUBSETTED in text["meta"]["tag"]
    r = await client.get(f"/fhir/Patient/{pid}", params={"_summary": "true"})
    assert r.status_code == 200 and "maritalStatus" not in r.json() and SUBSETTED in r.json()["meta"]["tag"]
    assert (await client.get("/fhir/Patient", params={"_summary": "nope"})).status_code == 400
    assert (await client.get(f"/fhir/Patient/{pid}", params={"_summary": "nope"})).status_code == 400
    # the stored resource is not changed by a subsetted read
    assert "maritalStatus" in (await client.get(f"/fhir/Patient/{pid}")).json()


async def test_summary_true_keeps_mandatory_elements(client: httpx.AsyncClient) -> None:
    oid = await _create(
        client,
        {"resourceType": "Observation", "status": "final", "code": {"text": "t"}, "note": [{"text": "n"}]},
    )
    obs = (await client.get(f"/fhir/Observation/{oid}", params={"_summary": "text"})).json()
    assert obs["status"] == "final" and obs["code"] == {"text": "t"} and "note" not in obs


async def test_total_modes(client: httpx.AsyncClient) -> None:
    for n in range(3):
        await _create(client, patient(f"tot-{n}"))
    for mode in ("accurate", "estimated"):
        body = (await client.get("/fhir/Patient", params={"_total": mode, "_count": "1"})).json()
        assert body["total"] == 3 and len(body["entry"]) == 1
    body = (await client.get("/fhir/Patient", params={"_total": "none"})).json()
    assert "total" not in body and len(body["entry"]) == 3
    assert (await client.get("/fhir/Patient")).json()["total"] == 3  # counted by default
    r = await client.get("/fhir/Patient", params={"_total": "some"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
