"""The history interaction over REST, on both backends: system, type and instance level, paging
through every page, ``_since``, ``_at``, deletes, and bad parameters (400, never 500)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.fhir.conftest import patient


async def _create(client: httpx.AsyncClient, value: str) -> dict[str, Any]:
    r = await client.post("/fhir/Patient", json=patient(value))
    assert r.status_code == 201
    body: dict[str, Any] = r.json()
    return body


async def _update(client: httpx.AsyncClient, pid: str, **extra: object) -> dict[str, Any]:
    r = await client.put(f"/fhir/Patient/{pid}", json={**patient(pid), "id": pid, **extra})
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


async def _pages(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    """Every page of a history, following ``next`` links to the end."""
    pages = []
    while True:
        r = await client.get(url)
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(page)
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            return pages
        url = nxt[0]


def _links(bundle: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle["link"]}


def _key(entry: dict[str, Any]) -> tuple[str, str]:
    return entry["fullUrl"], entry["response"]["etag"]


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _fhir(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


async def test_instance_history_pages_one_version_at_a_time(client: httpx.AsyncClient) -> None:
    pid = (await _create(client, "h-1"))["id"]
    await _update(client, pid, gender="male")
    await _update(client, pid, gender="other")

    first = (await client.get(f"/fhir/Patient/{pid}/_history?_count=1")).json()
    assert first["type"] == "history" and first["total"] == 3
    assert [e["resource"]["meta"]["versionId"] for e in first["entry"]] == ["3"]
    links = _links(first)
    assert links["self"] == f"http://test/fhir/Patient/{pid}/_history?_count=1"
    assert "previous" not in links and links["next"].startswith(f"http://test/fhir/Patient/{pid}/_history?")

    pages = await _pages(client, f"/fhir/Patient/{pid}/_history?_count=1")
    assert [[e["response"]["etag"] for e in p["entry"]] for p in pages] == [['W/"3"'], ['W/"2"'], ['W/"1"']]
    assert all(p["total"] == 3 for p in pages)
    # previous from the second page gives the first page back
    back = (await client.get(_links(pages[1])["previous"])).json()
    assert [e["response"]["etag"] for e in back["entry"]] == ['W/"3"']
    assert "previous" not in _links(back) and "next" in _links(back)
    # previous from the last page gives the middle one, with both links
    middle = (await client.get(_links(pages[2])["previous"])).json()
    assert [e["response"]["etag"] for e in middle["entry"]] == ['W/"2"']
    assert {"next", "previous"} <= set(_links(middle))


async def test_history_entries_as_hapi_renders_them(client: httpx.AsyncClient) -> None:
    pid = (await _create(client, "h-2"))["id"]
    await _update(client, pid, gender="male")
    assert (await client.delete(f"/fhir/Patient/{pid}")).status_code == 200

    bundle = (await client.get(f"/fhir/Patient/{pid}/_history")).json()
    deleted, updated, created = bundle["entry"]
    assert "next" not in _links(bundle)
    for e in bundle["entry"]:
        assert e["fullUrl"] == f"http://test/fhir/Patient/{pid}"
        assert e["response"]["lastModified"]
    assert "resource" not in deleted
    assert deleted["request"] == {"method": "DELETE", "url": f"Patient/{pid}/_history/3"}
    assert deleted["response"]["status"] == "200 OK" and deleted["response"]["etag"] == 'W/"3"'
    assert updated["request"] == {"method": "PUT", "url": f"Patient/{pid}/_history/2"}
    assert updated["resource"]["gender"] == "male" and updated["response"]["status"] == "200 OK"
    assert created["request"] == {"method": "POST", "url": f"Patient/{pid}/_history/1"}
    assert created["response"] == {
        "status": "201 Created",
        "etag": 'W/"1"',
        "lastModified": created["resource"]["meta"]["lastUpdated"],
    }


async def test_type_and_system_history(client: httpx.AsyncClient) -> None:
    a = (await _create(client, "h-a"))["id"]
    b = (await _create(client, "h-b"))["id"]
    await _update(client, a, gender="male")
    org = await client.post("/fhir/Organization", json={"resourceType": "Organization", "name": "Clinic"})
    assert org.status_code == 201
    assert (await client.delete(f"/fhir/Patient/{b}")).status_code == 200

    typed = (await client.get("/fhir/Patient/_history")).json()
    assert typed["type"] == "history" and typed["total"] == 4
    assert [(e["request"]["method"], e["request"]["url"]) for e in typed["entry"]] == [
        ("DELETE", f"Patient/{b}/_history/2"),
        ("PUT", f"Patient/{a}/_history/2"),
        ("POST", f"Patient/{b}/_history/1"),
        ("POST", f"Patient/{a}/_history/1"),
    ]
    assert _links(typed)["self"] == "http://test/fhir/Patient/_history"

    system = (await client.get("/fhir/_history")).json()
    assert system["total"] == 5
    assert [e["request"]["url"].split("/")[0] for e in system["entry"]] == [
        "Patient",
        "Organization",
        "Patient",
        "Patient",
        "Patient",
    ]
    stamps = [e["response"]["lastModified"] for e in system["entry"]]
    assert stamps == sorted(stamps, reverse=True)

    assert (await client.get("/fhir/Nonsense/_history")).status_code == 404
    empty = (await client.get("/fhir/Encounter/_history")).json()
    assert empty["total"] == 0 and "entry" not in empty


async def test_paging_through_every_page_while_others_write(client: httpx.AsyncClient) -> None:
    ids = [(await _create(client, f"pg-{n}"))["id"] for n in range(9)]
    for pid in ids[::2]:
        await _update(client, pid, gender="male")  # 14 versions in all
    expected = [_key(e) for e in (await client.get("/fhir/Patient/_history?_count=100")).json()["entry"]]
    assert len(expected) == 14

    seen: list[tuple[str, str]] = []
    url: str | None = "/fhir/Patient/_history?_count=4"
    pages = 0
    while url is not None:
        page = (await client.get(url)).json()
        seen += [_key(e) for e in page["entry"]]
        pages += 1
        if pages == 2:  # writes between pages: newer, so they never shift the pages still to come
            await _create(client, "pg-late")
            await _update(client, ids[1], gender="male")
        url = _links(page).get("next")
    assert pages == 4 and seen == expected

    # and backwards from the last page, previous by previous, the same versions in the same order
    last = (await _pages(client, "/fhir/Patient/_history?_count=5"))[-1]
    back: list[tuple[str, str]] = [_key(e) for e in last["entry"]]
    prev = _links(last).get("previous")
    while prev is not None:
        page = (await client.get(prev)).json()
        back = [_key(e) for e in page["entry"]] + back
        prev = _links(page).get("previous")
    latest = [_key(e) for e in (await client.get("/fhir/Patient/_history?_count=100")).json()["entry"]]
    assert back == latest and len(latest) == 16


async def test_since_and_at(client: httpx.AsyncClient) -> None:
    pid = (await _create(client, "h-t"))["id"]
    await asyncio.sleep(0.05)
    v2 = await _update(client, pid, gender="male")
    await asyncio.sleep(0.05)
    v3 = await _update(client, pid, gender="other")
    t2, t3 = _instant(v2["meta"]["lastUpdated"]), _instant(v3["meta"]["lastUpdated"])
    between = t2 + (t3 - t2) / 2

    since = (await client.get(f"/fhir/Patient/{pid}/_history", params={"_since": _fhir(t2)})).json()
    assert [e["response"]["etag"] for e in since["entry"]] == ['W/"3"', 'W/"2"']
    assert "total" not in since  # HAPI counts a history only without _since / _at
    typed = (await client.get("/fhir/Patient/_history", params={"_since": _fhir(t3)})).json()
    assert [e["response"]["etag"] for e in typed["entry"]] == ['W/"3"']
    future = _fhir(t3 + timedelta(seconds=5))
    assert "entry" not in (await client.get("/fhir/_history", params={"_since": future})).json()

    # _at: the versions current at some moment of the period
    at = (await client.get(f"/fhir/Patient/{pid}/_history", params={"_at": _fhir(between)})).json()
    assert [e["response"]["etag"] for e in at["entry"]] == ['W/"2"'] and "total" not in at
    at_ge = await client.get("/fhir/Patient/_history", params={"_at": "ge" + _fhir(between)})
    assert [e["response"]["etag"] for e in at_ge.json()["entry"]] == ['W/"3"', 'W/"2"']
    at_le = await client.get("/fhir/_history", params={"_at": "le" + _fhir(between)})
    assert [e["response"]["etag"] for e in at_le.json()["entry"]] == ['W/"2"', 'W/"1"']
    # a day's span: everything current that day
    day = (await client.get(f"/fhir/Patient/{pid}/_history", params={"_at": t3.date().isoformat()})).json()
    assert len(day["entry"]) >= 1 and day["entry"][0]["response"]["etag"] == 'W/"3"'

    # _since survives paging
    pages = await _pages(client, f"/fhir/Patient/{pid}/_history?_count=1&_since={_fhir(t2)}")
    assert [p["entry"][0]["response"]["etag"] for p in pages] == ['W/"3"', 'W/"2"']


async def test_count_zero_gives_the_total_only(client: httpx.AsyncClient) -> None:
    pid = (await _create(client, "h-0"))["id"]
    bundle = (await client.get(f"/fhir/Patient/{pid}/_history?_count=0")).json()
    assert bundle["total"] == 1 and "entry" not in bundle and "next" not in _links(bundle)


@pytest.mark.parametrize(
    "query",
    [
        "_count=abc",
        "_count=-1",
        "_since=yesterday",
        "_since=2024-13-01",
        "_at=soon",
        "_since=2024-01-01&_at=2024-01-01",
        "_page=garbage",
    ],
)
async def test_bad_parameters_are_400(client: httpx.AsyncClient, query: str) -> None:
    pid = (await _create(client, "h-bad"))["id"]
    for path in (f"/fhir/Patient/{pid}/_history", "/fhir/Patient/_history", "/fhir/_history"):
        r = await client.get(f"{path}?{query}")
        assert r.status_code == 400, (path, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"


async def test_a_page_token_belongs_to_its_history(client: httpx.AsyncClient) -> None:
    a = (await _create(client, "h-x"))["id"]
    await _update(client, a, gender="male")
    nxt = _links((await client.get(f"/fhir/Patient/{a}/_history?_count=1")).json())["next"]
    token = nxt.split("?", 1)[1]
    assert (await client.get(f"/fhir/Patient/_history?{token}")).status_code == 400
    assert (await client.get(f"/fhir/_history?{token}")).status_code == 400


async def test_unknown_instance_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/Patient/nobody/_history")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
