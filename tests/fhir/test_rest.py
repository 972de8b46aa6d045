"""The REST interactions of /fhir as a HAPI client sees them: create, read, vread, update, delete,
history, conditional create/update/delete, and their error answers."""

from __future__ import annotations

import httpx

from tests.fhir.conftest import patient

FHIR_JSON = "application/fhir+json;charset=utf-8"


def _issue(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issue: dict[str, object] = body["issue"][0]
    return issue


async def test_create_assigns_id_and_returns_headers(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/fhir/Patient", json={**patient(), "id": "client-chosen", "meta": {"versionId": "9"}}
    )
    assert r.status_code == 201
    body = r.json()
    assert body["id"] != "client-chosen" and body["id"].isdigit()
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("+00:00")
    assert r.headers["location"] == f"http://test/fhir/Patient/{body['id']}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["last-modified"].endswith("GMT")
    assert r.headers["content-type"] == FHIR_JSON


async def test_create_accepts_the_three_json_content_types(client: httpx.AsyncClient) -> None:
    for ctype in ("application/fhir+json", "application/json", "application/json+fhir; charset=utf-8"):
        r = await client.post(
            "/fhir/Patient",
            content=httpx.Response(200, json=patient()).content,
            headers={"Content-Type": ctype},
        )
        assert r.status_code == 201, ctype


async def test_prefer_header_variants(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b"" and r.headers["etag"] == 'W/"1"'
    r = await client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 201
    assert _issue(r)["severity"] == "information"
    r = await client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=representation"})
    assert r.json()["resourceType"] == "Patient"


async def test_read_vread_and_missing(client: httpx.AsyncClient) -> None:
    pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
    r = await client.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 200 and r.json()["id"] == pid and r.headers["etag"] == 'W/"1"'
    r = await client.get(f"/fhir/Patient/{pid}/_history/1")
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "1"
    r = await client.get(f"/fhir/Patient/{pid}/_history/7")
    assert r.status_code == 404
    r = await client.get("/fhir/Patient/nope")
    assert r.status_code == 404
    assert _issue(r)["diagnostics"] == "HAPI-2001: Resource Patient/nope is not known"


async def test_update_versions_and_noop(client: httpx.AsyncClient) -> None:
    created = (await client.post("/fhir/Patient", json=patient())).json()
    pid = created["id"]
    changed = {**created, "gender": "other"}
    r = await client.put(f"/fhir/Patient/{pid}", json=changed)
    assert r.status_code == 200 and r.headers["etag"] == 'W/"2"' and r.json()["gender"] == "other"
    # identical content: no new version
    r = await client.put(f"/fhir/Patient/{pid}", json=r.json())
    assert r.status_code == 200 and r.headers["etag"] == 'W/"2"'
    history = (await client.get(f"/fhir/Patient/{pid}/_history")).json()
    assert history["type"] == "history" and history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert (await client.get(f"/fhir/Patient/{pid}/_history/1")).json()["gender"] == "female"


async def test_update_rules(client: httpx.AsyncClient) -> None:
    created = (await client.post("/fhir/Patient", json=patient())).json()
    pid = created["id"]
    r = await client.put(f"/fhir/Patient/{pid}", json={**created, "id": "other"})
    assert r.status_code == 400 and "does not match URL ID" in str(_issue(r)["diagnostics"])
    no_id = {k: v for k, v in created.items() if k != "id"}
    assert (await client.put(f"/fhir/Patient/{pid}", json=no_id)).status_code == 400
    r = await client.put(
        f"/fhir/Patient/{pid}", json={**created, "gender": "male"}, headers={"If-Match": 'W/"5"'}
    )
    assert r.status_code == 409 and "HAPI-0989" in str(_issue(r)["diagnostics"])
    r = await client.put(
        f"/fhir/Patient/{pid}", json={**created, "gender": "male"}, headers={"If-Match": 'W/"1"'}
    )
    assert r.status_code == 200 and r.headers["etag"] == 'W/"2"'


async def test_update_as_create_needs_non_numeric_id(client: httpx.AsyncClient) -> None:
    r = await client.put("/fhir/Patient/abc-1", json={**patient(), "id": "abc-1"})
    assert r.status_code == 201 and r.json()["id"] == "abc-1"
    assert r.headers["location"].endswith("/Patient/abc-1/_history/1")
    r = await client.put("/fhir/Patient/12345", json={**patient(), "id": "12345"})
    assert r.status_code == 400 and "HAPI-0960" in str(_issue(r)["diagnostics"])
    assert (await client.get("/fhir/Patient/12345")).status_code == 404


async def test_delete_gives_410_and_keeps_history(client: httpx.AsyncClient) -> None:
    pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
    r = await client.delete(f"/fhir/Patient/{pid}")
    assert r.status_code == 200 and _issue(r)["severity"] == "information"
    r = await client.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 410 and "deleted" in str(_issue(r)["diagnostics"])
    assert (await client.get(f"/fhir/Patient/{pid}/_history/2")).status_code == 410
    assert (await client.get(f"/fhir/Patient/{pid}/_history/1")).status_code == 200
    history = (await client.get(f"/fhir/Patient/{pid}/_history")).json()
    assert history["total"] == 2 and history["entry"][0]["request"]["method"] == "DELETE"
    # deleting again, or something that never existed, is still 200 (current HAPI)
    assert (await client.delete(f"/fhir/Patient/{pid}")).status_code == 200
    assert (await client.delete("/fhir/Patient/never")).status_code == 200
    # a deleted resource is not found by search
    bundle = (await client.get("/fhir/Patient", params={"identifier": "p-1"})).json()
    assert bundle["total"] == 0 and "entry" not in bundle


async def test_delete_refused_while_referenced(client: httpx.AsyncClient) -> None:
    ep = (
        await client.post(
            "/fhir/Endpoint",
            json={"resourceType": "Endpoint", "status": "active", "address": "https://x.example/cb"},
        )
    ).json()
    org = (
        await client.post(
            "/fhir/Organization",
            json={
                "resourceType": "Organization",
                "name": "A",
                "endpoint": [{"reference": f"Endpoint/{ep['id']}"}],
            },
        )
    ).json()
    r = await client.delete(f"/fhir/Endpoint/{ep['id']}")
    assert r.status_code == 409 and f"Organization/{org['id']}" in str(_issue(r)["diagnostics"])
    assert (await client.get(f"/fhir/Endpoint/{ep['id']}")).status_code == 200
    assert (await client.delete(f"/fhir/Organization/{org['id']}")).status_code == 200
    assert (await client.delete(f"/fhir/Endpoint/{ep['id']}")).status_code == 200


async def test_conditional_create(client: httpx.AsyncClient) -> None:
    headers = {"If-None-Exist": "identifier=cht|cond-1"}
    r1 = await client.post("/fhir/Patient", json=patient("cond-1"), headers=headers)
    assert r1.status_code == 201
    r2 = await client.post("/fhir/Patient", json=patient("cond-1"), headers=headers)
    assert r2.status_code == 200 and r2.json()["id"] == r1.json()["id"]
    assert r2.json()["meta"]["versionId"] == "1"
    await client.post("/fhir/Patient", json=patient("dup"))
    await client.post("/fhir/Patient", json=patient("dup"))
    r3 = await client.post("/fhir/Patient", json=patient("dup"), headers={"If-None-Exist": "identifier=dup"})
    assert r3.status_code == 412
    total = (await client.get("/fhir/Patient", params={"identifier": "dup"})).json()["total"]
    assert total == 2


async def test_conditional_update_and_delete(client: httpx.AsyncClient) -> None:
    r = await client.put("/fhir/Patient?identifier=cht|cu-1", json=patient("cu-1"))
    assert r.status_code == 201
    pid = r.json()["id"]
    r = await client.put("/fhir/Patient?identifier=cht|cu-1", json=patient("cu-1", gender="male"))
    assert r.status_code == 200 and r.json()["id"] == pid and r.json()["meta"]["versionId"] == "2"
    r = await client.put("/fhir/Patient?identifier=cht|cu-1", json={**patient("cu-1"), "id": "zzz"})
    assert r.status_code == 400
    await client.post("/fhir/Patient", json=patient("cu-1"))
    assert (await client.put("/fhir/Patient?identifier=cu-1", json=patient("cu-1"))).status_code == 412
    assert (await client.delete("/fhir/Patient?identifier=cu-1")).status_code == 412
    assert (await client.delete(f"/fhir/Patient?_id={pid}")).status_code == 200
    assert (await client.get(f"/fhir/Patient/{pid}")).status_code == 410


async def test_errors_are_operation_outcomes(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/fhir/Patient", content=b"{not json", headers={"Content-Type": "application/fhir+json"}
    )
    assert (
        r.status_code == 400 and r.headers["content-type"] == FHIR_JSON and _issue(r)["severity"] == "error"
    )
    r = await client.post("/fhir/Patient", json={"gender": "female"})
    assert r.status_code == 400 and "resourceType" in str(_issue(r)["diagnostics"])
    r = await client.post("/fhir/Patient", json={"resourceType": "Encounter", "status": "finished"})
    assert r.status_code == 400
    r = await client.post("/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/xml"})
    assert r.status_code == 415
    r = await client.post("/fhir/Banana", json={"resourceType": "Banana"})
    assert r.status_code == 404 and "HAPI-0302" in str(_issue(r)["diagnostics"])
    assert (await client.get("/fhir/Banana/1")).status_code == 404
    r = await client.post("/fhir/Patient/5", json=patient())
    assert r.status_code == 400 and "HAPI-0365" in str(_issue(r)["diagnostics"])
    assert (await client.get("/fhir/Patient/$everything")).status_code == 400
    r = await client.patch("/fhir/Patient/1", json=[])  # application/json is no patch format (HAPI-1965)
    assert r.status_code == 400 and "HAPI-1965" in str(_issue(r)["diagnostics"])


async def test_body_too_large(tmp_path: object, database_url: str) -> None:
    from pathlib import Path

    from cht_interop.app import create_app
    from tests.conftest import CLIENT_AUTH, make_settings

    app = create_app(make_settings(Path(str(tmp_path)), database_url, MAX_BODY_BYTES=2000), run_worker=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", auth=CLIENT_AUTH) as c:
            r = await c.post(
                "/fhir/Patient", json={**patient(), "text": {"status": "generated", "div": "x" * 5000}}
            )
            assert r.status_code == 413
            assert _issue(r)["code"] == "too-long"
            assert (await c.get("/fhir/Patient")).json()["total"] == 0


async def test_validation_lenient_like_hapi(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir/Patient", json=patient(gender="banana"))
    assert r.status_code == 400 and _issue(r)["expression"] == ["Patient.gender"]
    r = await client.post("/fhir/Patient", json=patient(birthDate="2020-13-45"))
    assert r.status_code == 400 and _issue(r)["expression"] == ["Patient.birthDate"]
    r = await client.post("/fhir/Encounter", json={"resourceType": "Encounter", "status": "wrong_status"})
    assert r.status_code == 400 and _issue(r)["expression"] == ["Encounter.status"]
    r = await client.post(
        "/fhir/ServiceRequest", json={"resourceType": "ServiceRequest", "status": "active", "intent": "wish"}
    )
    assert r.status_code == 400 and _issue(r)["expression"] == ["ServiceRequest.intent"]
    # missing required elements, a string class, an unknown element: accepted, the bad parts dropped
    r = await client.post(
        "/fhir/Encounter", json={"resourceType": "Encounter", "class": "outpatient", "foo": 1}
    )
    assert r.status_code == 201
    assert "class" not in r.json() and "foo" not in r.json()
    # an array of one where one value belongs is taken as the value
    r = await client.post("/fhir/Organization", json={"resourceType": "Organization", "name": ["athena"]})
    assert r.status_code == 201 and r.json()["name"] == "athena"
    # meta.tag is kept
    r = await client.post("/fhir/Patient", json=patient(meta={"tag": [{"code": "t1"}]}))
    assert r.json()["meta"]["tag"] == [{"code": "t1"}]


async def test_references_on_write(client: httpx.AsyncClient) -> None:
    pid = (await client.post("/fhir/Patient", json=patient("ref-1"))).json()["id"]
    for form in ("Patient?identifier=ref-1", "Patient/?identifier=cht|ref-1"):
        enc = {
            "resourceType": "Encounter",
            "status": "finished",
            "class": "outpatient",
            "subject": {"reference": form},
        }
        r = await client.post("/fhir/Encounter", json=enc)
        assert r.status_code == 201 and r.json()["subject"]["reference"] == f"Patient/{pid}"
    r = await client.post(
        "/fhir/Encounter",
        json={
            "resourceType": "Encounter",
            "status": "finished",
            "subject": {"reference": "Patient?identifier=nobody"},
        },
    )
    assert r.status_code == 404 and "HAPI-1091" in str(_issue(r)["diagnostics"])
    await client.post("/fhir/Patient", json=patient("ref-1"))
    r = await client.post(
        "/fhir/Encounter",
        json={
            "resourceType": "Encounter",
            "status": "finished",
            "subject": {"reference": "Patient?identifier=ref-1"},
        },
    )
    assert r.status_code == 412
    r = await client.post(
        "/fhir/Organization",
        json={"resourceType": "Organization", "endpoint": [{"reference": "Endpoint/missing"}]},
    )
    assert r.status_code == 400 and "HAPI-1094" in str(_issue(r)["diagnostics"])
    assert _issue(r)["expression"] == ["Organization.endpoint"]
    ext = "http://other.example/fhir/Organization/9"
    r = await client.post("/fhir/Patient", json=patient("ext", managingOrganization={"reference": ext}))
    assert r.status_code == 201
    found = (await client.get("/fhir/Patient", params={"organization": ext})).json()
    assert found["total"] == 1 and found["entry"][0]["resource"]["identifier"][0]["value"] == "ext"
    assert (await client.get("/fhir/Encounter")).json()["total"] == 2


async def test_authentication_required(app: object) -> None:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as anon:
        for method, url in (
            ("GET", "/fhir/metadata"),
            ("GET", "/fhir/Patient"),
            ("POST", "/fhir/Patient"),
            ("POST", "/fhir"),
        ):
            r = await anon.request(method, url)
            assert r.status_code == 401, url
            assert "www-authenticate" in r.headers
        r = await anon.get("/fhir/Patient", auth=("interop-client", "wrong"))
        assert r.status_code == 401


async def test_capability_statement(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/metadata")
    assert r.status_code == 200
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    by_type = {res["type"]: res for res in cs["rest"][0]["resource"]}
    assert set(by_type) == {
        "Patient",
        "Practitioner",
        "Organization",
        "Endpoint",
        "ServiceRequest",
        "Task",
        "Encounter",
        "Observation",
        "Subscription",
    }
    names = {p["name"] for p in by_type["ServiceRequest"]["searchParam"]}
    assert {"identifier", "subject", "patient", "requester", "based-on", "status", "_id"} <= names
    # every advertised parameter really is searchable
    for rtype, res in by_type.items():
        for p in res["searchParam"]:
            r = await client.get(
                f"/fhir/{rtype}",
                params={f"{p['name']}:missing": "true"}
                if not p["name"].startswith("_")
                else {p["name"]: "x" if p["name"] == "_id" else "ge2020-01-01"},
            )
            assert r.status_code == 200, (rtype, p["name"], r.text)


async def test_more_error_answers(client: httpx.AsyncClient) -> None:
    assert (await client.get("/fhir/Patient/nobody/_history")).status_code == 404
    assert (await client.put("/fhir/Patient", json=patient())).status_code == 400
    assert (await client.delete("/fhir/Patient")).status_code == 400
    r = await client.put(
        "/fhir/Patient/new-one", json={**patient(), "id": "new-one"}, headers={"If-Match": 'W/"1"'}
    )
    assert r.status_code == 409
    assert (await client.get("/fhir/Patient/new-one")).status_code == 404
    r = await client.put("/fhir/Patient/bad id!", json={**patient(), "id": "bad id!"})
    assert r.status_code == 400
    created = (await client.post("/fhir/Patient", json=patient())).json()
    r = await client.put(
        f"/fhir/Patient/{created['id']}",
        json={**created, "gender": "male"},
        headers={"Prefer": "return=minimal"},
    )
    assert r.status_code == 200 and r.content == b"" and r.headers["etag"] == 'W/"2"'
    r = await client.put(
        f"/fhir/Patient/{created['id']}", content=b"[1", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert (await client.get(f"/fhir/Patient/{created['id']}")).json()["gender"] == "male"


async def test_update_of_deleted_resource_revives_it(client: httpx.AsyncClient) -> None:
    created = (await client.post("/fhir/Patient", json=patient("revive"))).json()
    await client.delete(f"/fhir/Patient/{created['id']}")
    r = await client.put(f"/fhir/Patient/{created['id']}", json=created)
    assert r.status_code == 201 and r.headers["etag"] == 'W/"3"'
    found = (await client.get("/fhir/Patient", params={"identifier": "revive"})).json()
    assert found["total"] == 1
