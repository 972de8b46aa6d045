"""HttpFhirClient against a HAPI double (we cannot run HAPI here), built from HAPI's source:
``next`` links at the server base (``?_getpages=``), ``total`` missing on large searches, errors as
OperationOutcome with HAPI codes, an empty body when the server ignores Prefer."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from cht_interop.fhir.errors import PreconditionFailed, ResourceGone, ResourceNotFound, VersionConflict
from cht_interop.fhir.http_client import HttpFhirClient

BASE = "http://hapi.test/fhir"


def _outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }


def hapi(request: httpx.Request) -> httpx.Response:
    path, params = request.url.path, dict(request.url.params)
    ctype = {"Content-Type": "application/fhir+json;charset=utf-8"}
    if path == "/fhir" and params.get("_getpages") == "abc":
        offset = int(params["_getpagesoffset"])
        entries = [
            {"resource": {"resourceType": "Patient", "id": str(i)}} for i in range(offset, min(offset + 2, 5))
        ]
        links = [{"relation": "self", "url": str(request.url)}]
        if offset + 2 < 5:
            links.append(
                {
                    "relation": "next",
                    "url": f"{BASE}?_getpages=abc&_getpagesoffset={offset + 2}&_count=2"
                    "&_bundletype=searchset",
                }
            )
        return httpx.Response(
            200,
            json={"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries},
            headers=ctype,
        )
    if path == "/fhir/Patient" and request.method == "GET":
        assert request.headers["cache-control"] == "no-cache"
        body = {
            "resourceType": "Bundle",
            "type": "searchset",  # no total, as HAPI on large sets
            "link": [{"relation": "next", "url": f"{BASE}?_getpages=abc&_getpagesoffset=2&_count=2"}],
            "entry": [{"resource": {"resourceType": "Patient", "id": str(i)}} for i in range(2)],
        }
        return httpx.Response(200, json=body, headers=ctype)
    if path == "/fhir/Patient" and request.method == "POST":
        if request.headers.get("if-none-exist") == "identifier=dup":
            return httpx.Response(412, json=_outcome("HAPI-0958: matched 2 resources"), headers=ctype)
        # a server that ignores Prefer: Location only, empty body
        return httpx.Response(201, headers={"Location": f"{BASE}/Patient/77/_history/1", "ETag": 'W/"1"'})
    if path == "/fhir/Patient/77":
        if request.method == "PUT":
            return httpx.Response(409, json=_outcome("HAPI-0989: not the current version"), headers=ctype)
        return httpx.Response(
            200, json={"resourceType": "Patient", "id": "77", "meta": {"versionId": "1"}}, headers=ctype
        )
    if path == "/fhir/Patient/gone":
        return httpx.Response(410, json=_outcome("HAPI-2244: Resource was deleted"), headers=ctype)
    if path == "/fhir/Patient/old" and request.method == "DELETE":
        return httpx.Response(
            404, json=_outcome("HAPI-2001: Resource Patient/old is not known"), headers=ctype
        )
    return httpx.Response(404, text="not here")


@pytest.fixture
async def client() -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(hapi)) as http:
        yield HttpFhirClient(BASE, http, auth=("u", "p"))


async def test_follows_hapi_next_links_without_total(client: HttpFhirClient) -> None:
    everything = await client.search_all("Patient", {"identifier": "x"})
    assert [r["id"] for r in everything] == ["0", "1", "2", "3", "4"]


async def test_create_when_the_server_answers_location_only(client: HttpFhirClient) -> None:
    out = await client.create({"resourceType": "Patient"})
    assert out.created and out.resource["id"] == "77"


async def test_statuses_map_to_typed_errors(client: HttpFhirClient) -> None:
    with pytest.raises(PreconditionFailed, match="HAPI-0958"):
        await client.create({"resourceType": "Patient"}, if_none_exist="identifier=dup")
    with pytest.raises(VersionConflict):
        await client.update({"resourceType": "Patient", "id": "77"}, if_match='W/"0"')
    with pytest.raises(ResourceGone):
        await client.read("Patient", "gone")
    with pytest.raises(ResourceNotFound) as err:
        await client.read("Patient", "nowhere")
    assert "not here" in err.value.diagnostics
    await client.delete("Patient", "old")  # old HAPI answered 404 for an unknown id: accepted


async def test_unreachable_server_is_a_502(client: HttpFhirClient) -> None:
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused")))
    ) as http:
        down = HttpFhirClient(BASE, http)
        with pytest.raises(Exception) as err:
            await down.read("Patient", "1")
    assert int(getattr(err.value, "status", 0)) == 502
    assert json.dumps(err.value.to_outcome())  # type: ignore[attr-defined]
