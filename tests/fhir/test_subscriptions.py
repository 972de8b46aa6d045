"""Subscriptions: HAPI's 422 rules, activation as version 2, indexed matching that enqueues
notification jobs in the write's own transaction (and never for unchanged updates or deletes)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir.inprocess import InProcessFhirClient
from cht_interop.fhir.store import FhirStore
from tests.fhir.conftest import patient

KIND = "fhir.subscription-notification"
CALLBACK = "https://callback.example/hook"


def subscription(criteria: str, status: str = "requested", **channel: Any) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": status,
        "reason": "follow-up",
        "criteria": criteria,
        "channel": {
            "type": "rest-hook",
            "endpoint": CALLBACK,
            "payload": "application/fhir+json",
            "header": ["Content-Type: application/fhir+json"],
            **channel,
        },
    }


def encounter(value: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "identifier": [{"system": "cht", "value": value}],
        **extra,
    }


async def _jobs(store: FhirStore) -> list[outbox.JobRecord]:
    async with store.db.connect() as conn:
        return list(reversed(await outbox.list_jobs(conn, kind=KIND, limit=1000)))


async def _subscribe(client: httpx.AsyncClient, criteria: str, **channel: Any) -> str:
    r = await client.post("/fhir/Subscription", json=subscription(criteria, **channel))
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


async def test_create_then_active_as_version_2(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir/Subscription", json={**subscription("Encounter?identifier=a"), "id": "mine"})
    assert r.status_code == 201
    created = r.json()
    assert created["id"] != "mine"
    assert created["status"] == "requested" and created["meta"]["versionId"] == "1"
    now = (await client.get(f"/fhir/Subscription/{created['id']}")).json()
    assert now["status"] == "active" and now["meta"]["versionId"] == "2"
    assert (await client.get(f"/fhir/Subscription/{created['id']}/_history/1")).json()[
        "status"
    ] == "requested"
    found = (await client.get("/fhir/Subscription", params={"status": "active"})).json()
    assert found["total"] == 1
    # a client may post active directly (HAPI permits it)
    r = await client.post("/fhir/Subscription", json=subscription("Encounter?identifier=b", status="active"))
    assert r.status_code == 201 and r.json()["meta"]["versionId"] == "1"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({**subscription("Encounter?identifier=a"), "status": None}, "status must be populated"),
        (subscription(""), "criteria must be populated"),
        (subscription("Encounter/?identifier=a"), "must be in the form"),
        (subscription("Encounter"), "must be in the form"),
        (subscription("Banana?x=1"), "unsupported resource type"),
        (subscription("Encounter?banana=1"), "Invalid subscription criteria"),
        (subscription("Encounter?identifier=a", type=None), "channel.type must be populated"),
        (subscription("Encounter?identifier=a", endpoint=None), "channel.endpoint"),
        (subscription("Encounter?identifier=a", endpoint="ftp://x/y"), "http(s) URL"),
        (subscription("Encounter?identifier=a", payload="text/banana"), "channel.payload"),
    ],
)
async def test_invalid_subscriptions_are_422(
    client: httpx.AsyncClient, body: dict[str, Any], needle: str
) -> None:
    body = {k: v for k, v in body.items() if v is not None}
    body["channel"] = {k: v for k, v in body["channel"].items() if v is not None}
    r = await client.post("/fhir/Subscription", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["issue"][0]["diagnostics"]
    assert (await client.get("/fhir/Subscription")).json()["total"] == 0


async def test_off_subscription_is_stored_unchecked_and_not_matched(
    client: httpx.AsyncClient, store: FhirStore
) -> None:
    r = await client.post("/fhir/Subscription", json=subscription("nonsense", status="off"))
    assert r.status_code == 201
    await client.post("/fhir/Encounter", json=encounter("x"))
    assert await _jobs(store) == []


async def test_matching_enqueues_notification_jobs(client: httpx.AsyncClient, store: FhirStore) -> None:
    sid = await _subscribe(client, "Encounter?identifier=pat-1")
    other = await _subscribe(client, "Encounter?identifier=pat-2")
    await client.post("/fhir/Encounter", json=encounter("unrelated"))
    assert await _jobs(store) == []
    enc = (await client.post("/fhir/Encounter", json=encounter("pat-1"))).json()
    jobs = await _jobs(store)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.payload == {
        "subscription_id": sid,
        "resource_type": "Encounter",
        "resource_id": enc["id"],
        "version_id": "1",
    }
    assert job.target == CALLBACK and job.ordering_key == f"Subscription/{sid}" and job.status == "pending"
    # a changed update notifies again with the new version; an unchanged one does not
    changed = {**enc, "status": "cancelled"}
    r = await client.put(f"/fhir/Encounter/{enc['id']}", json=changed)
    assert r.json()["meta"]["versionId"] == "2"
    await client.put(f"/fhir/Encounter/{enc['id']}", json=r.json())
    # deletes are not delivered
    await client.delete(f"/fhir/Encounter/{enc['id']}")
    jobs = await _jobs(store)
    assert [j.payload["version_id"] for j in jobs] == ["1", "2"]
    assert all(j.payload["subscription_id"] == sid for j in jobs)
    assert other not in {j.payload["subscription_id"] for j in jobs}


async def test_index_follows_status_changes_and_deletes(client: httpx.AsyncClient, store: FhirStore) -> None:
    sid = await _subscribe(client, "Encounter?identifier=follow")
    current = (await client.get(f"/fhir/Subscription/{sid}")).json()
    r = await client.put(f"/fhir/Subscription/{sid}", json={**current, "status": "off"})
    assert r.status_code == 200
    await client.post("/fhir/Encounter", json=encounter("follow"))
    assert await _jobs(store) == []
    current = r.json()
    r = await client.put(f"/fhir/Subscription/{sid}", json={**current, "status": "requested"})
    assert r.status_code == 200
    assert (await client.get(f"/fhir/Subscription/{sid}")).json()["status"] == "active"
    await client.post("/fhir/Encounter", json=encounter("follow"))
    assert len(await _jobs(store)) == 1
    # criteria changed: the index follows
    current = (await client.get(f"/fhir/Subscription/{sid}")).json()
    await client.put(f"/fhir/Subscription/{sid}", json={**current, "criteria": "Encounter?identifier=moved"})
    await client.post("/fhir/Encounter", json=encounter("follow"))
    await client.post("/fhir/Encounter", json=encounter("moved"))
    assert len(await _jobs(store)) == 2
    assert (await client.delete(f"/fhir/Subscription/{sid}")).status_code == 200
    await client.post("/fhir/Encounter", json=encounter("moved"))
    assert len(await _jobs(store)) == 2


@pytest.mark.parametrize("flush_between", [False, True], ids=["one-flush", "a-search-between"])
async def test_a_subscription_switched_off_with_a_matching_write_still_notifies_it(
    client: httpx.AsyncClient, store: FhirStore, flush_between: bool
) -> None:
    """One transaction writes a matching Encounter and switches the Subscription off: the Encounter
    happened while it was active, so it is notified (owed, delivered although off); later writes
    are not. With a search between the two, the switch-off is flushed before the matching."""
    sid = await _subscribe(client, "Encounter?identifier=done")
    current = (await client.get(f"/fhir/Subscription/{sid}")).json()
    off = {
        "resource": {**current, "status": "off"},
        "request": {"method": "PUT", "url": f"Subscription/{sid}"},
    }
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:e1",
            "resource": encounter("done"),
            "request": {"method": "POST", "url": "Encounter"},
        },
        off,
    ]
    if flush_between:  # a conditional PATCH searches (and so flushes) after the PUTs are staged
        await client.post("/fhir/Encounter", json=encounter("other"))
        patch = [{"op": "replace", "path": "/status", "value": "cancelled"}]
        body = {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": _b64(patch)}
        entries.append(
            {"resource": body, "request": {"method": "PATCH", "url": "Encounter?identifier=other"}}
        )
    r = await client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text
    (job,) = await _jobs(store)
    assert (job.payload["subscription_id"], job.payload["owed"]) == (sid, True)
    assert (await client.get(f"/fhir/Subscription/{sid}")).json()["status"] == "off"
    await client.post("/fhir/Encounter", json=encounter("done"))
    assert len(await _jobs(store)) == 1


def _b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


async def test_criteria_are_checked_in_full(client: httpx.AsyncClient, store: FhirStore) -> None:
    sid = await _subscribe(client, "Encounter?identifier=cht|full&status=finished")
    await client.post("/fhir/Encounter", json={**encounter("full"), "status": "planned"})
    await client.post(
        "/fhir/Encounter", json=encounter("full", identifier=[{"system": "other", "value": "full"}])
    )
    assert await _jobs(store) == []
    await client.post("/fhir/Encounter", json=encounter("full"))
    assert [j.payload["subscription_id"] for j in await _jobs(store)] == [sid]


async def test_unindexable_and_chained_criteria(client: httpx.AsyncClient, store: FhirStore) -> None:
    pid = (await client.post("/fhir/Patient", json=patient("chained"))).json()["id"]
    by_date = await _subscribe(client, "Encounter?date=ge2024-01-01")
    every = await _subscribe(client, "[Observation]")
    chained = await _subscribe(client, "Encounter?patient.identifier=chained")
    await client.post(
        "/fhir/Encounter", json=encounter("d1", period={"start": "2023-05-01", "end": "2023-05-02"})
    )
    assert await _jobs(store) == []
    await client.post("/fhir/Encounter", json=encounter("d2", period={"start": "2024-05-01"}))
    await client.post(
        "/fhir/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    )
    await client.post("/fhir/Encounter", json=encounter("d3", subject={"reference": f"Patient/{pid}"}))
    assert [j.payload["subscription_id"] for j in await _jobs(store)] == [by_date, every, chained]


async def test_reference_criteria_are_indexed(client: httpx.AsyncClient, store: FhirStore) -> None:
    pid = (await client.post("/fhir/Patient", json=patient("r"))).json()["id"]
    sid = await _subscribe(client, f"Task?patient=Patient/{pid}")
    await client.post("/fhir/Task", json={"resourceType": "Task", "status": "requested", "intent": "order"})
    await client.post(
        "/fhir/Task",
        json={
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "for": {"reference": f"Patient/{pid}"},
        },
    )
    assert [j.payload["subscription_id"] for j in await _jobs(store)] == [sid]


async def test_many_subscriptions_each_match_only_their_own(
    client: httpx.AsyncClient, store: FhirStore
) -> None:
    entries = [
        {
            "resource": subscription(f"Encounter?identifier=many-{n}"),
            "request": {"method": "POST", "url": "Subscription"},
        }
        for n in range(40)
    ]
    r = await client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200
    ids = [e["response"]["location"].split("/")[1] for e in r.json()["entry"]]
    await client.post("/fhir/Encounter", json=encounter("many-17"))
    await client.post("/fhir/Encounter", json=encounter("many-33"))
    assert [j.payload["subscription_id"] for j in await _jobs(store)] == [ids[17], ids[33]]


async def test_failed_write_enqueues_nothing(client: httpx.AsyncClient, store: FhirStore) -> None:
    await _subscribe(client, "Encounter?identifier=atomic")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": encounter("atomic"), "request": {"method": "POST", "url": "Encounter"}},
            {
                "resource": {"resourceType": "Patient", "gender": "banana"},
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    assert (await client.post("/fhir", json=bundle)).status_code == 400
    assert await _jobs(store) == []
    assert (await client.get("/fhir/Encounter")).json()["total"] == 0


async def test_transaction_jobs_commit_with_the_resources(store: FhirStore) -> None:
    fhir = InProcessFhirClient(store)
    job = NewJob(kind="test.kind", target="cht", payload={"n": 1}, ordering_key="k")
    good = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": patient("with-job"), "request": {"method": "POST", "url": "Patient"}}],
    }
    await fhir.transaction(good, jobs=[job])
    bad = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient("no-job", gender="nope"), "request": {"method": "POST", "url": "Patient"}}
        ],
    }
    with pytest.raises(Exception, match="gender"):
        await fhir.transaction(bad, jobs=[NewJob(kind="test.kind", target="cht", payload={"n": 2})])
    async with store.db.connect() as conn:
        jobs = await outbox.list_jobs(conn, kind="test.kind")
    assert [j.payload for j in jobs] == [{"n": 1}]


async def test_a_subscription_created_then_changed_in_one_transaction_keeps_only_its_final_criteria(
    client: httpx.AsyncClient, store: FhirStore
) -> None:
    """A transaction creates a Subscription, then a conditional PATCH (which searches, so the
    creation is flushed first) changes its criteria: only the final criteria notify."""
    patch = [{"op": "replace", "path": "/criteria", "value": "Encounter?identifier=new"}]
    body = {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": _b64(patch)}
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:s1",
            "resource": subscription("Encounter?identifier=old"),
            "request": {"method": "POST", "url": "Subscription"},
        },
        {"resource": body, "request": {"method": "PATCH", "url": "Subscription?status=active"}},
    ]
    r = await client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text
    sid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    assert (await client.get(f"/fhir/Subscription/{sid}")).json()["criteria"] == "Encounter?identifier=new"
    await client.post("/fhir/Encounter", json=encounter("old"))
    assert await _jobs(store) == []
    await client.post("/fhir/Encounter", json=encounter("new"))
    assert [j.payload["subscription_id"] for j in await _jobs(store)] == [sid]
