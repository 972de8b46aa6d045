"""Search as HAPI clients use it: token, reference, chain, string, date, _lastUpdated, sort, paging."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.fhir.conftest import patient


async def _ids(client: httpx.AsyncClient, url: str, params: Any = None) -> list[str]:
    r = await client.get(url, params=params)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


async def _create(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    r = await client.post(f"/fhir/{body['resourceType']}", json=body)
    assert r.status_code == 201, r.text
    rid: str = r.json()["id"]
    return rid


async def test_token_forms(client: httpx.AsyncClient) -> None:
    a = await _create(client, patient("v1", system="sys-a"))
    b = await _create(client, patient("v1", system="sys-b"))
    c = await _create(client, {"resourceType": "Patient", "identifier": [{"value": "v1"}]})
    d = await _create(client, patient("v2", system="sys-a"))
    assert sorted(await _ids(client, "/fhir/Patient", {"identifier": "v1"})) == sorted([a, b, c])
    assert await _ids(client, "/fhir/Patient", {"identifier": "sys-a|v1"}) == [a]
    assert await _ids(client, "/fhir/Patient", {"identifier": "|v1"}) == [c]
    assert sorted(await _ids(client, "/fhir/Patient", {"identifier": "sys-a|"})) == sorted([a, d])
    assert sorted(await _ids(client, "/fhir/Patient", {"identifier": "sys-a|v1,v2"})) == sorted([a, d])
    # repeating the parameter means AND
    assert await _ids(client, "/fhir/Patient", [("identifier", "v1"), ("identifier", "sys-b|")]) == [b]
    # values are exact and case-sensitive
    assert await _ids(client, "/fhir/Patient", {"identifier": "V1"}) == []
    # :not and :missing
    assert sorted(await _ids(client, "/fhir/Patient", {"identifier:not": "sys-a|v1"})) == sorted([b, c, d])
    e = await _create(client, {"resourceType": "Patient", "gender": "male"})
    assert await _ids(client, "/fhir/Patient", {"identifier:missing": "true"}) == [e]
    assert len(await _ids(client, "/fhir/Patient", {"identifier:missing": "false"})) == 4
    assert await _ids(client, "/fhir/Patient", {"gender": "male"}) == [e]


async def test_empty_result_and_trailing_slash(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/Patient/?identifier=nobody")
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 0 and "entry" not in body
    pid = await _create(client, patient("slash"))
    assert await _ids(client, "/fhir/Patient/?identifier=slash") == [pid]


async def test_id_and_status(client: httpx.AsyncClient) -> None:
    ids = [await _create(client, patient(f"i{n}")) for n in range(3)]
    assert sorted(await _ids(client, "/fhir/Patient", {"_id": f"{ids[0]},{ids[2]}"})) == sorted(
        [ids[0], ids[2]]
    )
    sr = {"resourceType": "ServiceRequest", "intent": "order", "subject": {"reference": f"Patient/{ids[0]}"}}
    active = await _create(client, {**sr, "status": "active"})
    await _create(client, {**sr, "status": "revoked"})
    assert await _ids(client, "/fhir/ServiceRequest", {"status": "active"}) == [active]


async def test_reference_forms_and_chains(client: httpx.AsyncClient) -> None:
    p1 = await _create(client, patient("chain-1"))
    p2 = await _create(client, patient("chain-2", system="other"))
    org = await _create(client, {"resourceType": "Organization", "identifier": [{"value": "org-1"}]})
    sr1 = await _create(
        client,
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{p1}"},
            "requester": {"reference": f"Organization/{org}"},
        },
    )
    sr2 = await _create(
        client,
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{p2}"},
        },
    )
    task = await _create(
        client,
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "basedOn": [{"reference": f"ServiceRequest/{sr1}"}],
            "for": {"reference": f"Patient/{p1}"},
            "owner": {"reference": f"Organization/{org}"},
        },
    )
    url = "/fhir/ServiceRequest"
    assert await _ids(client, url, {"subject": f"Patient/{p1}"}) == [sr1]
    assert await _ids(client, url, {"subject": p1}) == [sr1]
    assert await _ids(client, url, {"subject:Patient": p2}) == [sr2]
    assert await _ids(client, url, {"patient": p2}) == [sr2]
    assert await _ids(client, url, {"subject": f"http://test/fhir/Patient/{p1}"}) == [sr1]
    assert await _ids(client, url, {"requester": f"Organization/{org}"}) == [sr1]
    assert await _ids(client, url, {"subject:Patient.identifier": "cht|chain-1"}) == [sr1]
    assert await _ids(client, url, {"patient.identifier": "chain-2"}) == [sr2]
    assert await _ids(client, url, {"patient.identifier": "nobody"}) == []
    assert await _ids(client, "/fhir/Task", {"based-on": f"ServiceRequest/{sr1}"}) == [task]
    assert await _ids(client, "/fhir/Task", {"patient": p1}) == [task]
    assert await _ids(client, "/fhir/Task", {"owner": f"Organization/{org}"}) == [task]
    assert await _ids(client, "/fhir/Task", {"for": f"Patient/{p2}"}) == []
    # a chain whose chained parameter is itself a reference: two reference-index lookups, nested
    chained = {"based-on:ServiceRequest.requester": f"Organization/{org}"}
    assert await _ids(client, "/fhir/Task", chained) == [task]
    assert await _ids(client, "/fhir/Task", {"based-on:ServiceRequest.requester": "Organization/999"}) == []
    assert (await client.get(url, params={"patient:Organization": "1"})).status_code == 400


async def test_string_and_date(client: httpx.AsyncClient) -> None:
    a = await _create(
        client,
        {
            "resourceType": "Patient",
            "name": [{"family": "Müller", "given": ["Ann"]}],
            "birthDate": "1990-04-01",
        },
    )
    b = await _create(
        client, {"resourceType": "Patient", "name": [{"family": "Miller"}], "birthDate": "2001"}
    )
    assert await _ids(client, "/fhir/Patient", {"family": "mull"}) == [a]
    assert await _ids(client, "/fhir/Patient", {"name": "ann"}) == [a]
    assert await _ids(client, "/fhir/Patient", {"family:exact": "Miller"}) == [b]
    assert await _ids(client, "/fhir/Patient", {"family:exact": "miller"}) == []
    assert sorted(await _ids(client, "/fhir/Patient", {"name:contains": "ll"})) == sorted([a, b])
    assert await _ids(client, "/fhir/Patient", {"birthdate": "1990-04-01"}) == [a]
    assert await _ids(client, "/fhir/Patient", {"birthdate": "1990"}) == [a]
    assert await _ids(client, "/fhir/Patient", {"birthdate": "gt2000-06-01"}) == [b]
    assert await _ids(client, "/fhir/Patient", {"birthdate": "lt1995"}) == [a]
    assert (await client.get("/fhir/Patient", params={"birthdate": "not-a-date"})).status_code == 400


async def test_last_updated_prefixes_and_sort(client: httpx.AsyncClient) -> None:
    first = (await client.post("/fhir/Patient", json=patient("lu-1"))).json()
    await asyncio.sleep(0.01)
    second = (await client.post("/fhir/Patient", json=patient("lu-2"))).json()
    t1 = first["meta"]["lastUpdated"]
    assert await _ids(client, "/fhir/Patient", {"_lastUpdated": f"gt{t1}"}) == [second["id"]]
    assert sorted(await _ids(client, "/fhir/Patient", {"_lastUpdated": f"ge{t1}"})) == sorted(
        [first["id"], second["id"]]
    )
    assert await _ids(client, "/fhir/Patient", {"_lastUpdated": f"le{t1}"}) == [first["id"]]
    assert await _ids(client, "/fhir/Patient", {"_lastUpdated": "lt2000-01-01"}) == []
    assert len(await _ids(client, "/fhir/Patient", {"_lastUpdated": "ge2020-01-01"})) == 2
    assert await _ids(client, "/fhir/Patient", {"_sort": "-_lastUpdated"}) == [second["id"], first["id"]]
    assert await _ids(client, "/fhir/Patient", {"_sort": "_lastUpdated"}) == [first["id"], second["id"]]
    assert await _ids(client, "/fhir/Patient", {"_sort": "-identifier"}) == [second["id"], first["id"]]
    assert (await client.get("/fhir/Patient", params={"_sort": "nonsense"})).status_code == 400


async def test_paging_with_stateless_cursor(client: httpx.AsyncClient) -> None:
    created = [await _create(client, patient(f"pg-{n}", system="paging")) for n in range(7)]
    r = await client.get("/fhir/Patient", params={"identifier": "paging|", "_count": "3"})
    page = r.json()
    assert page["total"] == 7
    seen = [e["resource"]["id"] for e in page["entry"]]
    links = {lk["relation"]: lk["url"] for lk in page["link"]}
    assert "previous" not in links
    while "next" in links:
        nxt = links["next"]
        assert nxt.startswith("http://test/fhir/Patient?")
        page = (await client.get(nxt)).json()
        assert page["total"] == 7
        seen += [e["resource"]["id"] for e in page["entry"]]
        links = {lk["relation"]: lk["url"] for lk in page["link"]}
        assert "previous" in links
    assert seen == created
    back = (await client.get(links["previous"])).json()
    assert [e["resource"]["id"] for e in back["entry"]] == created[3:6]
    assert (await client.get("/fhir/Patient", params={"_page": "garbage"})).status_code == 400


async def test_summary_count_and_total(client: httpx.AsyncClient) -> None:
    for n in range(3):
        await _create(client, patient(f"sc-{n}"))
    body = (await client.get("/fhir/Patient", params={"_summary": "count"})).json()
    assert body["total"] == 3 and "entry" not in body
    body = (await client.get("/fhir/Patient", params={"_total": "accurate", "_count": "1"})).json()
    assert body["total"] == 3 and len(body["entry"]) == 1


async def test_post_search_form_encoded(client: httpx.AsyncClient) -> None:
    pid = await _create(client, patient("form-1"))
    r = await client.post("/fhir/Patient/_search", data={"identifier": "cht|form-1"})
    assert r.status_code == 200 and [e["resource"]["id"] for e in r.json()["entry"]] == [pid]
    r = await client.post("/fhir/Patient/_search", json={"identifier": "x"})
    assert r.status_code == 415


async def test_unknown_parameter_is_400(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/Patient", params={"foo": "bar"})
    assert r.status_code == 400
    diag = r.json()["issue"][0]["diagnostics"]
    assert diag.startswith('HAPI-0524: Unknown search parameter "foo" for resource type "Patient"')
    assert "identifier" in diag
    assert (await client.get("/fhir/Patient", params={"identifier:banana": "x"})).status_code == 400
    assert (await client.get("/fhir/Patient", params={"_count": "many"})).status_code == 400


async def test_include_and_revinclude(client: httpx.AsyncClient) -> None:
    pid = await _create(client, patient("inc-1"))
    org = await _create(client, {"resourceType": "Organization", "name": "Req"})
    sr = await _create(
        client,
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{pid}"},
            "requester": {"reference": f"Organization/{org}"},
        },
    )
    task = await _create(
        client,
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "basedOn": [{"reference": f"ServiceRequest/{sr}"}],
        },
    )
    r = await client.get(
        "/fhir/ServiceRequest",
        params=[
            ("_id", sr),
            ("_include", "ServiceRequest:subject"),
            ("_include", "ServiceRequest:requester:Organization"),
            ("_revinclude", "Task:based-on"),
        ],
    )
    body = r.json()
    assert body["total"] == 1
    modes = {(e["resource"]["resourceType"], e["resource"]["id"]): e["search"]["mode"] for e in body["entry"]}
    assert modes == {
        ("ServiceRequest", sr): "match",
        ("Patient", pid): "include",
        ("Organization", org): "include",
        ("Task", task): "include",
    }
    only_patient = (
        await client.get(
            "/fhir/ServiceRequest", params={"_include": "ServiceRequest:subject:Patient", "patient": pid}
        )
    ).json()
    assert [e["resource"]["resourceType"] for e in only_patient["entry"]] == ["ServiceRequest", "Patient"]
    assert (await client.get("/fhir/ServiceRequest", params={"_include": "Task:focus"})).status_code == 400
    assert (
        await client.get("/fhir/ServiceRequest", params={"_include": "ServiceRequest:status"})
    ).status_code == 400


async def test_elements_subsets_matches(client: httpx.AsyncClient) -> None:
    pid = await _create(client, patient("el-1"))
    body = (await client.get("/fhir/Patient", params={"_id": pid, "_elements": "identifier,gender"})).json()
    res = body["entry"][0]["resource"]
    assert set(res) == {"resourceType", "id", "meta", "identifier", "gender"}
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "SUBSETTED",
    } in res["meta"]["tag"]
    assert "name" in (await client.get(f"/fhir/Patient/{pid}")).json()


async def test_searches_with_a_thousand_or_values(store: Any) -> None:
    """LTFU lookups put hundreds of values in one parameter; SQLite refused ~1,000 ORed terms
    ("Expression tree is too large"). Every form still answers exactly the matching resources."""
    n = 1200
    entries = [
        {
            "fullUrl": f"urn:uuid:p{i}",
            "resource": patient(f"v{i}", system=f"sys-{i % 600}"),
            "request": {"method": "POST", "url": "Patient"},
        }
        for i in range(n)
    ] + [
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"urn:uuid:p{i}"},
            },
            "request": {"method": "POST", "url": "Observation"},
        }
        for i in range(0, n, 2)
    ]
    out = await store.process_bundle({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    ids = [e["response"]["location"].split("/")[1] for e in out["entry"][:n]]

    async def found(rtype: str, name: str, values: list[str]) -> set[str]:
        params = [(name, ",".join(values))]
        matched = await store.search_ids(rtype, params)
        counted = await store.search(rtype, [*params, ("_summary", "count")])
        assert counted["total"] == len(matched)
        return set(matched)

    wanted = range(0, n, 1)  # 1,200 values
    # bare codes, system|code with 600 distinct systems, and a mix (plus values that match nothing)
    assert await found("Patient", "identifier", [f"v{i}" for i in wanted] + ["nope"]) == set(ids)
    with_system = [f"sys-{i % 600}|v{i}" for i in wanted] + ["sys-1|v0"]  # the last matches nothing
    assert await found("Patient", "identifier", with_system) == set(ids)
    mixed = [f"v{i}" if i % 3 else f"sys-{i % 600}|v{i}" for i in range(0, n, 2)]
    assert await found("Patient", "identifier", mixed) == {ids[i] for i in range(0, n, 2)}
    # :not with many values leaves exactly the others
    rest = await found("Patient", "identifier:not", [f"v{i}" for i in range(1, n, 2)])
    assert rest == {ids[i] for i in range(0, n, 2)}
    # references: typed, bare ids, and _id
    observations = [e["response"]["location"].split("/")[1] for e in out["entry"][n:]]  # of ids[0::2]
    assert await found("Observation", "subject", [f"Patient/{i}" for i in ids]) == set(observations)
    # bare ids (the parameter's single target type), half of them without an Observation
    assert await found("Observation", "subject", ids[: n // 2]) == set(observations[: n // 4])
    assert await found("Patient", "_id", ids) == set(ids)


@pytest.mark.parametrize(
    ("raw", "values"),
    [
        ("a,b", ("a", "b")),
        ("x", ("x",)),
        ("", ("",)),
        ("a\\,b,c", ("a,b", "c")),  # an escaped comma is part of the value
        ("a\\\\,b", ("a\\", "b")),  # an escaped backslash, then a separating comma
    ],
)
def test_search_values_split_on_unescaped_commas(raw: str, values: tuple[str, ...]) -> None:
    from cht_interop.fhir.search import split_values

    assert split_values(raw) == values
