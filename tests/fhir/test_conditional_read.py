"""Conditional read and vread over REST, on both backends: ``If-None-Match`` and
``If-Modified-Since`` answer 304 Not Modified (no body) when the client's copy is current."""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime

import httpx
import pytest

from tests.fhir.conftest import patient


async def _created(client: httpx.AsyncClient) -> tuple[str, httpx.Response]:
    r = await client.post("/fhir/Patient", json=patient("cr-1"))
    assert r.status_code == 201
    pid = r.json()["id"]
    return pid, await client.get(f"/fhir/Patient/{pid}")


@pytest.mark.parametrize("tag", ['W/"1"', '"1"', "1", 'W/"7", W/"1"', "*"])
async def test_if_none_match_current_version_is_304(client: httpx.AsyncClient, tag: str) -> None:
    pid, _ = await _created(client)
    r = await client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": tag})
    assert r.status_code == 304 and r.content == b""
    assert r.headers["etag"] == 'W/"1"'


async def test_if_none_match_an_older_version_reads_the_current_one(client: httpx.AsyncClient) -> None:
    pid, _ = await _created(client)
    r = await client.put(f"/fhir/Patient/{pid}", json={**patient("cr-1"), "id": pid, "gender": "male"})
    assert r.status_code == 200
    r = await client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 200 and r.json()["gender"] == "male" and r.headers["etag"] == 'W/"2"'
    again = await client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


async def test_if_modified_since(client: httpx.AsyncClient) -> None:
    pid, first = await _created(client)
    last_modified = first.headers["last-modified"]
    r = await client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": last_modified})
    assert r.status_code == 304 and r.content == b""
    later = format_datetime(parsedate_to_datetime(last_modified) + timedelta(hours=1), usegmt=True)
    assert (await client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": later})).status_code == 304
    earlier = format_datetime(parsedate_to_datetime(last_modified) - timedelta(seconds=1), usegmt=True)
    r = await client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": earlier})
    assert r.status_code == 200 and r.json()["id"] == pid
    # a date HTTP cannot parse is ignored
    r = await client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": "last tuesday"})
    assert r.status_code == 200
    # If-None-Match decides when both are sent (HTTP): a stale tag reads, whatever the date says
    r = await client.get(
        f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"9"', "If-Modified-Since": later}
    )
    assert r.status_code == 200


async def test_vread_is_conditional_too(client: httpx.AsyncClient) -> None:
    pid, _ = await _created(client)
    await client.put(f"/fhir/Patient/{pid}", json={**patient("cr-1"), "id": pid, "gender": "male"})
    r = await client.get(f"/fhir/Patient/{pid}/_history/1", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304 and r.content == b""
    r = await client.get(f"/fhir/Patient/{pid}/_history/1", headers={"If-None-Match": 'W/"2"'})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "1"


async def test_deleted_and_unknown_are_not_304(client: httpx.AsyncClient) -> None:
    pid, _ = await _created(client)
    assert (await client.delete(f"/fhir/Patient/{pid}")).status_code == 200
    assert (await client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": "*"})).status_code == 410
    assert (await client.get("/fhir/Patient/nobody", headers={"If-None-Match": "*"})).status_code == 404
