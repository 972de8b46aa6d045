"""POST /fhir with batch and transaction Bundles."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fhir.conftest import patient


def _tx(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _post(resource: dict[str, Any], full_url: str | None = None, **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


async def _total(client: httpx.AsyncClient, rtype: str) -> int:
    total: int = (await client.get(f"/fhir/{rtype}", params={"_summary": "count"})).json()["total"]
    return total


async def test_transaction_rewrites_urn_uuid_references(client: httpx.AsyncClient) -> None:
    urn = "urn:uuid:7f1d3c2a-0000-4000-8000-000000000001"
    bundle = _tx(
        _post({"resourceType": "Encounter", "status": "finished", "subject": {"reference": urn}}),
        _post(patient("tx-1"), urn),
    )
    r = await client.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    enc_resp, pat_resp = (e["response"] for e in out["entry"])
    assert enc_resp["status"] == "201 Created" and pat_resp["status"] == "201 Created"
    assert enc_resp["location"].startswith("Encounter/") and enc_resp["etag"] == 'W/"1"'
    pid = pat_resp["location"].split("/")[1]
    eid = enc_resp["location"].split("/")[1]
    enc = (await client.get(f"/fhir/Encounter/{eid}")).json()
    assert enc["subject"]["reference"] == f"Patient/{pid}"
    found = (await client.get("/fhir/Encounter", params={"patient.identifier": "tx-1"})).json()
    assert found["total"] == 1


async def test_transaction_if_none_exist_and_order(client: httpx.AsyncClient) -> None:
    existing = (await client.post("/fhir/Patient", json=patient("tx-exists"))).json()["id"]
    urn = "urn:uuid:7f1d3c2a-0000-4000-8000-000000000002"
    bundle = _tx(
        {"request": {"method": "GET", "url": "Encounter?patient.identifier=tx-exists"}},
        _post({"resourceType": "Encounter", "status": "planned", "subject": {"reference": urn}}),
        _post(patient("tx-exists"), urn, ifNoneExist="identifier=cht|tx-exists"),
    )
    out = (await client.post("/fhir", json=bundle)).json()
    get_resp, enc_resp, pat_resp = out["entry"]
    assert pat_resp["response"]["status"] == "200 OK"
    assert pat_resp["response"]["location"] == f"Patient/{existing}/_history/1"
    # GET runs last, so it sees the Encounter the same transaction created
    assert get_resp["resource"]["total"] == 1
    assert get_resp["resource"]["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{existing}"
    assert enc_resp["response"]["status"] == "201 Created"
    assert await _total(client, "Patient") == 1


async def test_transaction_put_delete_and_match_url_reference(client: httpx.AsyncClient) -> None:
    doomed = (await client.post("/fhir/Patient", json=patient("doomed"))).json()["id"]
    bundle = _tx(
        _post(patient("tx-2")),
        _post(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "subject": {"reference": "Patient/?identifier=tx-2"},
            }
        ),
        {
            "resource": {**patient("tx-put"), "id": "put-1"},
            "request": {"method": "PUT", "url": "Patient/put-1"},
        },
        {"request": {"method": "DELETE", "url": f"Patient/{doomed}"}},
    )
    r = await client.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201 Created", "201 Created", "201 Created", "200 OK"]
    assert (await client.get(f"/fhir/Patient/{doomed}")).status_code == 410
    assert (await client.get("/fhir/Patient/put-1")).status_code == 200
    enc = (await client.get("/fhir/Encounter", params={"patient.identifier": "tx-2"})).json()
    assert enc["total"] == 1


async def test_transaction_is_atomic(client: httpx.AsyncClient) -> None:
    good = _post(patient("atomic-1"))
    for bad, status in (
        (_post(patient("atomic-2", gender="banana")), 400),
        (_post({"resourceType": "Encounter", "subject": {"reference": "Patient?identifier=nobody"}}), 404),
        (_post({"resourceType": "Organization", "endpoint": [{"reference": "Endpoint/none"}]}), 400),
        (
            {
                "resource": {**patient(), "id": "x1"},
                "request": {"method": "PUT", "url": "Patient/x1", "ifMatch": 'W/"3"'},
            },
            409,
        ),
    ):
        r = await client.post("/fhir", json=_tx(good, bad))
        assert r.status_code == status, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
        assert "Bundle.entry[1]" in r.json()["issue"][0]["diagnostics"]
    await client.post("/fhir/Patient", json=patient("dup"))
    await client.post("/fhir/Patient", json=patient("dup"))
    r = await client.post("/fhir", json=_tx(good, _post(patient("x"), ifNoneExist="identifier=dup")))
    assert r.status_code == 412
    assert await _total(client, "Patient") == 2  # only the two created outside the failed transactions
    assert await _total(client, "Encounter") == 0


async def test_batch_entries_are_independent(client: httpx.AsyncClient) -> None:
    bundle = _tx(
        _post(patient("batch-1")),
        _post(patient("batch-2", gender="banana")),
        {"request": {"method": "GET", "url": "Patient/nothing-here"}},
        {"request": {"method": "GET", "url": "Patient?identifier=batch-1"}},
        kind="batch",
    )
    r = await client.post("/fhir", json=bundle)
    assert r.status_code == 200
    out = r.json()
    assert out["type"] == "batch-response"
    e0, e1, e2, e3 = out["entry"]
    assert e0["response"]["status"] == "201 Created"
    assert e1["response"]["status"] == "400 Bad Request"
    assert e1["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert e2["response"]["status"] == "404 Not Found"
    assert e3["resource"]["total"] == 1
    assert await _total(client, "Patient") == 1


async def test_bundle_errors(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir", json={"resourceType": "Bundle", "type": "collection", "entry": []})
    assert r.status_code == 400
    assert (await client.post("/fhir", json=patient())).status_code == 400
    r = await client.post("/fhir", json=_tx({"resource": patient()}))
    assert r.status_code == 400
    r = await client.post(
        "/fhir", json=_tx({"resource": patient(), "request": {"method": "PATCH", "url": "Patient/1"}})
    )
    assert r.status_code == 400 and "Unable to determine PATCH body" in r.text


async def test_large_transaction(client: httpx.AsyncClient) -> None:
    entries = []
    for n in range(1000):
        urn = f"urn:uuid:00000000-0000-4000-8000-{n:012d}"
        entries.append(_post(patient(f"bulk-{n}", system="bulk"), urn))
        entries.append(
            _post(
                {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "identifier": [{"value": f"e{n}"}],
                    "subject": {"reference": urn},
                }
            )
        )
    r = await client.post("/fhir", json=_tx(*entries))
    assert r.status_code == 200
    assert len(r.json()["entry"]) == 2000
    assert await _total(client, "Patient") == 1000
    enc = (await client.get("/fhir/Encounter", params={"patient.identifier": "bulk|bulk-517"})).json()
    assert [e["resource"]["identifier"][0]["value"] for e in enc["entry"]] == ["e517"]


async def test_a_large_transaction_is_atomic_too(client: httpx.AsyncClient) -> None:
    """Big transactions of plain creates stage their rows before taking SQLite's writer: a dangling
    reference in the last entry still fails the whole Bundle, and nothing is written."""
    creates = [_post(patient(f"big-{n}", system="big")) for n in range(1200)]
    dangling = _post({"resourceType": "Organization", "endpoint": [{"reference": "Endpoint/none"}]})
    r = await client.post("/fhir", json=_tx(*creates, dangling))
    assert r.status_code == 400, r.text
    assert "Bundle.entry[1200]" in r.json()["issue"][0]["diagnostics"]
    assert await _total(client, "Patient") == 0
    r = await client.post("/fhir", json=_tx(*creates))
    assert r.status_code == 200, r.text
    assert await _total(client, "Patient") == 1200


async def test_conditional_operations_answer_alike_over_rest_and_in_a_transaction(
    client: httpx.AsyncClient,
) -> None:
    """One implementation behind both: a conditional create, update or delete gives the same status
    and HAPI's message whether it comes as a REST interaction or as a transaction Bundle entry
    (where the message is prefixed with the entry)."""
    for _ in range(2):
        await client.post("/fhir/Patient", json=patient("twin"))
    solo = (await client.post("/fhir/Patient", json=patient("solo"))).json()["id"]
    several = "because this search matched 2 resources"
    cases: list[tuple[str, httpx.Response, dict[str, Any], int, str]] = [
        (
            "create",
            await client.post(
                "/fhir/Patient", json=patient("x"), headers={"If-None-Exist": "identifier=cht|twin"}
            ),
            _post(patient("x"), ifNoneExist="identifier=cht|twin"),
            412,
            f'HAPI-0958: Failed to CREATE resource with match URL "identifier=cht|twin" {several}',
        ),
        (
            "update",
            await client.put("/fhir/Patient?identifier=cht|twin", json=patient("twin")),
            {"resource": patient("twin"), "request": {"method": "PUT", "url": "Patient?identifier=cht|twin"}},
            412,
            f'HAPI-0988: Failed to UPDATE resource with match URL "Patient?identifier=cht|twin" {several}',
        ),
        (
            "update, other id",
            await client.put("/fhir/Patient?identifier=cht|solo", json={**patient("solo"), "id": "zzz"}),
            {
                "resource": {**patient("solo"), "id": "zzz"},
                "request": {"method": "PUT", "url": "Patient?identifier=cht|solo"},
            },
            400,
            'HAPI-2279: Failed to UPDATE resource with match URL "Patient?identifier=cht|solo" because the '
            f"matching resource has ID {solo} but the body has ID zzz",
        ),
        (
            "delete",
            await client.delete("/fhir/Patient?identifier=cht|twin"),
            {"request": {"method": "DELETE", "url": "Patient?identifier=cht|twin"}},
            412,
            f'HAPI-0962: Failed to DELETE resource with match URL "Patient?identifier=cht|twin" {several}',
        ),
    ]
    for name, rest, entry, status, message in cases:
        in_bundle = await client.post("/fhir", json=_tx(entry))
        assert (rest.status_code, in_bundle.status_code) == (status, status), name
        assert rest.json()["issue"][0]["diagnostics"] == message, name
        assert in_bundle.json()["issue"][0]["diagnostics"] == f"Bundle.entry[0]: {message}", name
    assert await _total(client, "Patient") == 3


async def test_conditional_put_resolves_references_to_its_full_url(client: httpx.AsyncClient) -> None:
    """FHIR: a conditional update's fullUrl stands for the resource it created, or the one it matched."""
    urn = "urn:uuid:7f1d3c2a-0000-4000-8000-0000000000c1"

    def bundle(status: str) -> dict[str, Any]:
        return _tx(
            {
                "fullUrl": urn,
                "resource": patient("put-1"),
                "request": {"method": "PUT", "url": "Patient?identifier=cht|put-1"},
            },
            _post({"resourceType": "Encounter", "status": status, "subject": {"reference": urn}}),
        )

    first = (await client.post("/fhir", json=bundle("planned"))).json()
    put_resp, enc_resp = (e["response"] for e in first["entry"])
    assert put_resp["status"] == "201 Created"
    pid = put_resp["location"].split("/")[1]
    again = (await client.post("/fhir", json=bundle("finished"))).json()
    put_again, enc_again = (e["response"] for e in again["entry"])
    assert put_again["status"] == "200 OK" and put_again["location"].split("/")[1] == pid
    for resp in (enc_resp, enc_again):
        enc = (await client.get(f"/fhir/{resp['location'].rsplit('/_history', 1)[0]}")).json()
        assert enc["subject"] == {"reference": f"Patient/{pid}"}
    assert await _total(client, "Patient") == 1
