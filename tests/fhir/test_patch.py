"""PATCH over REST and in Bundles, on both backends: JSON Patch (RFC 6902) as HAPI serves it."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson

from tests.fhir.conftest import patient

JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def _issue(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    issue: dict[str, Any] = body["issue"][0]
    return issue


async def _create(client: httpx.AsyncClient, **extra: object) -> str:
    r = await client.post("/fhir/Patient", json=patient(**extra))  # type: ignore[arg-type]
    assert r.status_code == 201
    return str(r.json()["id"])


async def _patch(client: httpx.AsyncClient, url: str, ops: object, **headers: str) -> httpx.Response:
    return await client.patch(url, content=orjson.dumps(ops), headers={**JSON_PATCH, **headers})


def _binary(ops: object, content_type: str | None = "application/json-patch+json") -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Binary", "data": base64.b64encode(orjson.dumps(ops)).decode()}
    if content_type:
        res["contentType"] = content_type
    return res


def _tx(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _patch_entry(url: str, resource: object) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "PATCH", "url": url}}


async def test_patch_writes_a_new_version_with_update_headers(client: httpx.AsyncClient) -> None:
    pid = await _create(client)
    r = await _patch(
        client,
        f"/fhir/Patient/{pid}",
        [
            {"op": "replace", "path": "/gender", "value": "male"},
            {"op": "add", "path": "/active", "value": True},
        ],
    )
    assert r.status_code == 200
    body = r.json()
    assert body["gender"] == "male" and body["active"] is True and body["meta"]["versionId"] == "2"
    assert body["name"] == [{"family": "Doe", "given": ["Jane"]}]  # untouched fields stay
    assert r.headers["ETag"] == 'W/"2"'
    assert r.headers["Location"].endswith(f"/fhir/Patient/{pid}/_history/2")
    assert r.headers["Last-Modified"].endswith("GMT")
    read = (await client.get(f"/fhir/Patient/{pid}")).json()
    assert read["gender"] == "male" and read["meta"]["versionId"] == "2"
    # the new version is searchable by the patched value
    found = (await client.get("/fhir/Patient", params={"gender": "male"})).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [pid]


async def test_patch_prefer_and_a_patch_that_changes_nothing(client: httpx.AsyncClient) -> None:
    pid = await _create(client)
    ops = [{"op": "replace", "path": "/birthDate", "value": "1991-01-01"}]
    r = await _patch(client, f"/fhir/Patient/{pid}", ops, Prefer="return=minimal")
    assert r.status_code == 200 and r.content == b"" and r.headers["ETag"] == 'W/"2"'
    ops = [{"op": "replace", "path": "/birthDate", "value": "1992-02-02"}]
    r = await _patch(client, f"/fhir/Patient/{pid}", ops, Prefer="return=OperationOutcome")
    assert r.status_code == 200 and _issue(r)["severity"] == "information"
    assert "patched" in _issue(r)["diagnostics"] and r.headers["ETag"] == 'W/"3"'
    # the same value again: no new version (an update that changes nothing)
    r = await _patch(client, f"/fhir/Patient/{pid}", ops)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "3"


async def test_patch_if_match(client: httpx.AsyncClient) -> None:
    pid = await _create(client)
    ops = [{"op": "replace", "path": "/gender", "value": "other"}]
    r = await _patch(client, f"/fhir/Patient/{pid}", ops, **{"If-Match": 'W/"9"'})
    assert r.status_code == 409
    assert _issue(r)["diagnostics"] == (
        "HAPI-0550: HAPI-0974: Version 9 is not the most recent version of this resource, "
        "unable to apply patch"
    )
    assert (await client.get(f"/fhir/Patient/{pid}")).json()["meta"]["versionId"] == "1"
    r = await _patch(client, f"/fhir/Patient/{pid}", ops, **{"If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.json()["gender"] == "other"


async def test_patch_errors_change_nothing(client: httpx.AsyncClient) -> None:
    pid = await _create(client)
    url = f"/fhir/Patient/{pid}"
    cases: list[tuple[object, str]] = [
        (
            [{"op": "test", "path": "/gender", "value": "male"}, {"op": "remove", "path": "/name"}],
            "test failed",
        ),
        ([{"op": "remove", "path": "/telecom"}], "HAPI-1272"),
        ([{"op": "replace", "path": "/name/7/family", "value": "X"}], "HAPI-1272"),
        ([{"op": "replace", "path": "/id", "value": "other"}], "may not change the resource's id"),
        ([{"op": "replace", "path": "/resourceType", "value": "Group"}], "resourceType"),
        ([{"op": "jump", "path": "/gender"}], "HAPI-1272"),
        ({"op": "replace", "path": "/gender", "value": "male"}, "must be a JSON array"),
    ]
    for ops, message in cases:
        r = await _patch(client, url, ops)
        assert r.status_code == 400, (ops, r.text)
        assert message in _issue(r)["diagnostics"], (ops, r.text)
    # a result that is no valid Patient is refused like an update would refuse it
    r = await _patch(client, url, [{"op": "replace", "path": "/gender", "value": 7}])
    assert r.status_code == 400 and _issue(r)["severity"] == "error"
    r = await client.patch(url, content=b"[{", headers=JSON_PATCH)
    assert r.status_code == 400 and "HAPI-1272" in _issue(r)["diagnostics"]
    r = await client.patch(url, content=b"", headers=JSON_PATCH)
    assert r.status_code == 400
    assert (await client.get(url)).json()["meta"]["versionId"] == "1"


async def test_patch_content_types(client: httpx.AsyncClient) -> None:
    pid = await _create(client)
    ops = orjson.dumps([{"op": "replace", "path": "/gender", "value": "male"}])
    for ctype in ("application/json", "text/plain", "application/merge-patch+json"):
        r = await client.patch(f"/fhir/Patient/{pid}", content=ops, headers={"Content-Type": ctype})
        assert r.status_code == 400
        assert _issue(r)["diagnostics"] == f"HAPI-1965: Invalid Content-Type for PATCH operation: {ctype}"
    r = await client.patch(f"/fhir/Patient/{pid}", content=ops)
    assert r.status_code == 400 and "Invalid Content-Type for PATCH" in _issue(r)["diagnostics"]
    # with a charset, as most clients send it
    r = await client.patch(
        f"/fhir/Patient/{pid}",
        content=ops,
        headers={"Content-Type": "application/json-patch+json; charset=utf-8"},
    )
    assert r.status_code == 200
    # FHIRPath Patch, as application/fhir+json
    fhirpath = _fhirpath(("replace", "Patient.gender", {"value": {"valueCode": "female"}}))
    r = await client.patch(
        f"/fhir/Patient/{pid}",
        content=orjson.dumps(fhirpath),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 200 and r.json()["gender"] == "female" and r.json()["meta"]["versionId"] == "3"


def _fhirpath(*ops: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """A FHIRPath Patch: (type, path, {part name: {value[x]: ...}}) per operation."""
    params = []
    for kind, path, parts in ops:
        part: list[dict[str, Any]] = [
            {"name": "type", "valueCode": kind},
            {"name": "path", "valueString": path},
        ]
        part += [{"name": name, **value} for name, value in parts.items()]
        params.append({"name": "operation", "part": part})
    return {"resourceType": "Parameters", "parameter": params}


async def test_fhirpath_patch(client: httpx.AsyncClient) -> None:
    pid = await _create(client, value="fp-1", identifier=[{"value": "a"}, {"value": "b"}])
    doc = _fhirpath(
        ("add", "Patient", {"name": {"valueString": "active"}, "value": {"valueBoolean": True}}),
        ("add", "Patient.name[0]", {"name": {"valueString": "given"}, "value": {"valueString": "Ann"}}),
        (
            "add",
            "Patient",
            {
                "name": {"valueString": "telecom"},
                "value": {"valueContactPoint": {"system": "phone", "value": "1"}},
            },
        ),
        (
            "insert",
            "Patient.identifier",
            {"index": {"valueInteger": 0}, "value": {"valueIdentifier": {"value": "z"}}},
        ),
        ("move", "Patient.identifier", {"source": {"valueInteger": 0}, "destination": {"valueInteger": 2}}),
        ("delete", "Patient.birthDate", {}),
        ("delete", "Patient.address", {}),  # nothing there: no error
        ("replace", "Patient.name[0].family", {"value": {"valueString": "Smith"}}),
    )
    fhir_json = {"Content-Type": "application/fhir+json"}
    r = await client.patch(f"/fhir/Patient/{pid}", content=orjson.dumps(doc), headers=fhir_json)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["active"] is True and body["telecom"] == [{"system": "phone", "value": "1"}]
    assert body["name"] == [{"family": "Smith", "given": ["Jane", "Ann"]}]
    assert [i["value"] for i in body["identifier"]] == ["a", "b", "z"] and "birthDate" not in body
    assert body["meta"]["versionId"] == "2"
    cases: list[tuple[dict[str, Any], str, str]] = [
        (
            _fhirpath(("replace", "Patient.deceasedBoolean", {"value": {"valueBoolean": True}})),
            "invalid",
            "no element",
        ),
        (
            _fhirpath(("add", "Patient", {"name": {"valueString": "gender"}, "value": {"valueCode": "x"}})),
            "invalid",
            "already has a value",
        ),
        (
            _fhirpath(("replace", "Patient.banana", {"value": {"valueString": "x"}})),
            "invalid",
            "unknown element",
        ),
        (_fhirpath(("delete", "Patient.identifier.where(value='a')", {})), "not-supported", "simple paths"),
        (_fhirpath(("jump", "Patient.gender", {})), "invalid", "unknown type"),
        (_fhirpath(("replace", "Patient.gender", {"value": {"valueCode": "unknown-code"}})), "", ""),
        ({"resourceType": "Patient"}, "invalid", "Parameters"),
    ]
    for doc, code, message in cases:
        r = await client.patch(f"/fhir/Patient/{pid}", content=orjson.dumps(doc), headers=fhir_json)
        assert r.status_code == 400, (doc, r.text)
        assert code in _issue(r)["code"] and message in _issue(r)["diagnostics"], r.text
    r = await client.patch(f"/fhir/Patient/{pid}", content=b"{", headers=fhir_json)
    assert r.status_code == 400 and "HAPI-0450" in _issue(r)["diagnostics"]
    assert (await client.get(f"/fhir/Patient/{pid}")).json()["meta"]["versionId"] == "2"


async def test_patch_missing_deleted_unknown_type(client: httpx.AsyncClient) -> None:
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    r = await _patch(client, "/fhir/Patient/424242", ops)
    assert r.status_code == 404 and _issue(r)["code"] == "not-found"
    r = await _patch(client, "/fhir/Banana/1", ops)
    assert r.status_code == 404 and "HAPI-0302" in _issue(r)["diagnostics"]
    pid = await _create(client)
    assert (await client.delete(f"/fhir/Patient/{pid}")).status_code == 200
    r = await _patch(client, f"/fhir/Patient/{pid}", ops)
    assert r.status_code == 410 and _issue(r)["code"] == "deleted"


async def test_conditional_patch(client: httpx.AsyncClient) -> None:
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    r = await _patch(client, "/fhir/Patient?identifier=cht|nobody", ops)
    assert r.status_code == 404
    assert _issue(r)["diagnostics"] == (
        'HAPI-0973: Invalid match URL "Patient?identifier=cht|nobody" - No resources match this search'
    )
    pid = await _create(client, value="cp-1")
    r = await _patch(client, "/fhir/Patient?identifier=cht|cp-1", ops)
    assert r.status_code == 200 and r.json()["id"] == pid and r.json()["gender"] == "male"
    assert r.headers["Location"].endswith(f"/Patient/{pid}/_history/2")
    await _create(client, value="cp-2", birthDate="1970-01-01")
    await _create(client, value="cp-3", birthDate="1970-01-01")
    r = await _patch(client, "/fhir/Patient?birthdate=1970-01-01", ops)
    assert r.status_code == 412
    assert _issue(r)["diagnostics"] == (
        'HAPI-0972: Failed to PATCH resource with match URL "Patient?birthdate=1970-01-01" because this '
        "search matched 2 resources"
    )
    r = await _patch(client, "/fhir/Patient", ops)
    assert r.status_code == 400 and "HAPI-0419" in _issue(r)["diagnostics"]


async def test_unsupported_methods_name_the_allowed_ones(client: httpx.AsyncClient) -> None:
    r = await client.patch("/fhir", json=[])
    assert r.status_code == 405 and set(r.headers["Allow"].split(", ")) == {"POST"}
    r = await client.put("/fhir/Patient/1/_history")
    assert r.status_code == 405 and r.headers["Allow"] == "GET"
    r = await client.post("/fhir/Patient/1/_history/1")
    assert r.status_code == 405 and "POST" not in r.headers["Allow"] and "GET" in r.headers["Allow"]


async def test_transaction_patch_entries(client: httpx.AsyncClient) -> None:
    a = await _create(client, value="tx-a")
    b = await _create(client, value="tx-b")
    bundle = _tx(
        _patch_entry(f"Patient/{a}", _binary([{"op": "replace", "path": "/gender", "value": "male"}])),
        _patch_entry(
            "Patient?identifier=cht|tx-b", _binary([{"op": "add", "path": "/active", "value": False}])
        ),
        {"resource": patient(value="tx-c"), "request": {"method": "POST", "url": "Patient"}},
    )
    r = await client.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    e1, e2, e3 = r.json()["entry"]
    assert e1["response"]["status"] == "200 OK" and e1["response"]["etag"] == 'W/"2"'
    assert e1["response"]["location"] == f"Patient/{a}/_history/2"
    assert e2["response"]["location"] == f"Patient/{b}/_history/2"
    assert e3["response"]["status"] == "201 Created"
    assert (await client.get(f"/fhir/Patient/{a}")).json()["gender"] == "male"
    assert (await client.get(f"/fhir/Patient/{b}")).json()["active"] is False


async def test_transaction_with_a_failing_patch_writes_nothing(client: httpx.AsyncClient) -> None:
    a = await _create(client, value="rb-a")
    good = _patch_entry(f"Patient/{a}", _binary([{"op": "replace", "path": "/gender", "value": "male"}]))
    create = {"resource": patient(value="rb-new"), "request": {"method": "POST", "url": "Patient"}}
    bad_ops = _patch_entry(f"Patient/{a}", _binary([{"op": "test", "path": "/gender", "value": "female"}]))
    r = await client.post("/fhir", json=_tx(create, good, bad_ops))
    assert r.status_code == 400 and "Bundle.entry[2]" in _issue(r)["diagnostics"]
    assert (await client.get(f"/fhir/Patient/{a}")).json()["meta"]["versionId"] == "1"
    found = (await client.get("/fhir/Patient", params={"identifier": "cht|rb-new"})).json()
    assert found["total"] == 0
    # the other ways an entry's patch can be wrong, each a 4xx naming the entry
    cases: list[tuple[dict[str, Any], int, str]] = [
        (
            _patch_entry(f"Patient/{a}", _binary([], content_type=None)),
            400,
            "Missing or invalid content type",
        ),
        (
            _patch_entry(f"Patient/{a}", _binary([], content_type="application/octet-stream")),
            400,
            "Invalid Content-Type for PATCH operation: application/octet-stream",
        ),
        (_patch_entry(f"Patient/{a}", _binary([], content_type="application/fhir+json")), 400, "Parameters"),
        (
            _patch_entry(
                f"Patient/{a}", {"resourceType": "Binary", "contentType": "application/json-patch+json"}
            ),
            400,
            "Unable to determine PATCH body",
        ),
        (_patch_entry(f"Patient/{a}", patient()), 400, "Unable to determine PATCH body"),
        (
            _patch_entry(f"Patient/{a}", _fhirpath(("delete", "Patient.name.where(family='Doe')", {}))),
            400,
            "simple paths",
        ),
        (_patch_entry("Patient/999999", _binary([])), 404, "HAPI-2001"),
        (_patch_entry("Patient?identifier=cht|none", _binary([])), 404, "HAPI-0973"),
    ]
    for entry, status, message in cases:
        r = await client.post("/fhir", json=_tx(create, entry))
        assert r.status_code == status, (entry, r.text)
        assert "Bundle.entry[1]" in _issue(r)["diagnostics"] and message in _issue(r)["diagnostics"], r.text
    found = (await client.get("/fhir/Patient", params={"identifier": "cht|rb-new"})).json()
    assert found["total"] == 0


async def test_transaction_fhirpath_patch_entry(client: httpx.AsyncClient) -> None:
    a = await _create(client, value="tx-fp")
    doc = _fhirpath(("replace", "Patient.gender", {"value": {"valueCode": "male"}}))
    r = await client.post("/fhir", json=_tx(_patch_entry("Patient?identifier=cht|tx-fp", doc)))
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["location"] == f"Patient/{a}/_history/2"
    assert (await client.get(f"/fhir/Patient/{a}")).json()["gender"] == "male"


async def test_transaction_patch_if_match_and_batch(client: httpx.AsyncClient) -> None:
    a = await _create(client, value="bt-a")
    entry = _patch_entry(f"Patient/{a}", _binary([{"op": "replace", "path": "/gender", "value": "male"}]))
    entry["request"]["ifMatch"] = 'W/"5"'
    r = await client.post("/fhir", json=_tx(entry))
    assert r.status_code == 409 and "HAPI-0974" in _issue(r)["diagnostics"]
    bad = _patch_entry(f"Patient/{a}", _binary([{"op": "remove", "path": "/nothing"}]))
    ok = _patch_entry(f"Patient/{a}", _binary([{"op": "replace", "path": "/gender", "value": "male"}]))
    r = await client.post("/fhir", json=_tx(bad, ok, kind="batch"))
    assert r.status_code == 200
    e1, e2 = r.json()["entry"]
    assert e1["response"]["status"] == "400 Bad Request" and "HAPI-1272" in str(e1["response"]["outcome"])
    assert e2["response"]["status"] == "200 OK" and e2["response"]["etag"] == 'W/"2"'
