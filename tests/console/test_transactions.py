"""The Transactions pages: the journal's list with filters and keyset paging, one row's detail,
a follow-up's timeline, and the search from an OpenHIM transaction id to that timeline."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import httpx
import pytest

from cht_interop.console import transaction_routes
from cht_interop.services import Services
from tests.ltfu.conftest import endpoint_body, organization_body, push_patient, service_request_body

TX_ID = "65a1b2c3d4e5f60718293a4b"
OPENHIM = {"X-OpenHIM-TransactionID": TX_ID, "X-OpenHIM-ClientID": "interop-client"}
TOKEN = "Bearer cb-token-7f3a9e2d41"


def flat(page: httpx.Response) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


def links(page: httpx.Response, prefix: str) -> list[str]:
    return [unescape(h) for h in re.findall(r'href="([^"]+)"', page.text) if h.startswith(prefix)]


@pytest.fixture
async def follow_up(client: httpx.AsyncClient, services: Services, drain: Any) -> dict[str, Any]:
    """A follow-up requested through OpenHIM (its transaction id), its CHT record sent; the
    requester's callback Endpoint carries a secret header."""
    endpoint = endpoint_body()
    endpoint["header"] = [f"Authorization: {TOKEN}"]
    ep = await client.post("/mediator/endpoint", json=endpoint)
    assert ep.status_code == 201, ep.text
    assert (
        await client.post("/mediator/organization", json=organization_body(ep.json()["id"]))
    ).status_code == 201
    patient = await push_patient(client)
    res = await client.post("/mediator/service-request", json=service_request_body(patient), headers=OPENHIM)
    assert res.status_code == 201, res.text
    await drain()
    assert services.journal is not None
    await services.journal.flush()
    return dict(res.json()["properties"])


async def test_an_openhim_transaction_id_opens_its_follow_ups_timeline(
    admin: httpx.AsyncClient, follow_up: dict[str, Any]
) -> None:
    res = await admin.get("/console/transactions/find", params={"transaction_id": f" {TX_ID} "})
    assert res.status_code == 303
    timeline = await admin.get(res.headers["location"])
    assert timeline.status_code == 200
    text = flat(timeline)
    assert f"What happened to follow-up {follow_up['followUpId']}" in text
    assert f"POST /mediator/service-request by interop-client 201 Successful {TX_ID} ← searched" in text
    assert "delivery attempt 1 · cht.record" in text
    assert links(timeline, f"/console/follow-ups/{follow_up['taskId']}")  # the CHT record, Encounter, jobs
    (job_link,) = set(links(timeline, "/console/deliveries/"))
    assert (await admin.get(job_link)).status_code == 200

    # the CHT submission's row: the call to the CHT as made, and the request that started it
    rows = links(timeline, "/console/transactions/")
    attempt = await admin.get(rows[-1])
    text = flat(attempt)
    assert "Delivery attempt 1 of job" in text and "done" in text
    assert f"Started by transaction {TX_ID}" in text
    assert "Outbound calls (" in text and "POST 127.0.0.1:" in text and "/medic/_bulk_docs" in text
    assert "interop-follow-up-" in text  # the record's id, in the part of the call that was its own
    assert "Response HTTP 201" in text
    assert TOKEN not in attempt.text and "cb-token" not in timeline.text


async def test_a_requests_detail_shows_bodies_as_stored_and_its_properties(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, services: Services, follow_up: dict[str, Any]
) -> None:
    page = await admin.get("/console/transactions", params={"path": "/mediator/endpoint"})
    (row,) = [h for h in links(page, "/console/transactions/") if "follow-ups" not in h]
    detail = await admin.get(row)
    text = flat(detail)
    assert "POST /mediator/endpoint" in text and "Client interop-client" in text
    assert "Request body" in text and "Authorization: ***" in text  # redacted when it was written
    assert TOKEN not in detail.text
    sr = await admin.get("/console/transactions", params={"path": "/mediator/service-request"})
    (sr_row,) = [h for h in links(sr, "/console/transactions/") if "follow-ups" not in h]
    text = flat(await admin.get(sr_row))
    assert f"Transaction id {TX_ID}" in text
    assert f"followUpId {follow_up['followUpId']}" in text and f"taskId {follow_up['taskId']}" in text


async def test_filters_narrow_the_list(admin: httpx.AsyncClient, follow_up: dict[str, Any]) -> None:
    async def rows(**params: str) -> list[str]:
        page = await admin.get("/console/transactions", params=params)
        assert page.status_code == 200, page.text
        return re.findall(r"<td class=\"when\">", page.text)

    everything = await rows()
    assert len(everything) == 5  # endpoint, organization, patient, service request; the CHT record
    assert len(await rows(kind="job")) == 1
    assert len(await rows(kind="request", status="201")) == 4
    assert len(await rows(status="4xx")) == 0
    assert len(await rows(client="interop-client")) == 4
    assert len(await rows(client="someone-else")) == 0
    assert len(await rows(path="/mediator/service")) == 1
    assert len(await rows(follow_up=follow_up["followUpId"])) == 2  # its request and its CHT record
    assert len(await rows(since="2000-01-01", until="2000-01-02")) == 0
    assert len(await rows(since="2000-01-01T00:00")) == 5


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"status": "teapot"}, "neither an HTTP status"),
        ({"since": "31/01/2026"}, "is not a date"),
        ({"kind": "other"}, "neither request nor job"),
        ({"outcome": "fine"}, "is not one of"),
        ({"after": "not-a-cursor|x"}, "the page link is damaged"),
    ],
)
async def test_bad_filters_answer_400_saying_what_is_wrong(
    admin: httpx.AsyncClient, params: dict[str, str], says: str
) -> None:
    res = await admin.get("/console/transactions", params=params)
    assert res.status_code == 400
    assert says in flat(res)


async def test_keyset_pages_show_every_row_once(
    admin: httpx.AsyncClient, follow_up: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transaction_routes, "PAGE_SIZE", 2)
    seen: list[str] = []
    url: str | None = "/console/transactions"
    while url:
        page = await admin.get(url)
        assert page.status_code == 200
        seen += [h for h in links(page, "/console/transactions/") if "follow-ups" not in h]
        older = re.search(r'rel="next" href="([^"]+)"', page.text)
        url = unescape(older.group(1)) if older else None
    assert len(seen) == 5 == len(set(seen))


async def test_an_unknown_transaction_id_is_404_and_an_empty_search_400(admin: httpx.AsyncClient) -> None:
    missing = await admin.get("/console/transactions/find", params={"transaction_id": "nope"})
    assert missing.status_code == 404 and "No transaction 'nope' in the log" in flat(missing)
    assert (await admin.get("/console/transactions/find")).status_code == 400
    assert (await admin.get("/console/transactions/unknown-row")).status_code == 404
    assert (await admin.get("/console/transactions/follow-ups/unknown")).status_code == 404
