"""Outbound push as Sentinel does it (cht-core outbound.js), with the reference configuration unchanged
except for where it sends (its ``base_url`` points at a real loopback receiver)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from cht_interop.sandbox.config import SandboxConfig
from cht_interop.sandbox.store import MEDIC, SENTINEL, VAULT
from tests.sandbox.conftest import (
    ADMIN_AUTH,
    JSON,
    POST_JSON,
    Receiver,
    Running,
    reference_settings,
    running_sandbox,
)
from tests.sandbox.helpers import build_world

SECRET = "openhim-Secret-pw"


def pointed_at(url: str) -> dict[str, Any]:
    settings = reference_settings()
    for conf in settings["outbound"].values():
        conf["destination"]["base_url"] = url
    return settings


@pytest.fixture
async def pushing(make_config: Callable[..., SandboxConfig], receiver: Receiver) -> AsyncIterator[Running]:
    config = make_config(app_settings=pointed_at(receiver.url), outbound_retry_seconds=3600)
    async with running_sandbox(config) as running:
        r = await running.client.put(
            "/api/v1/credentials/openhim1",
            content=SECRET.encode(),
            headers={**JSON, **ADMIN_AUTH, "Content-Type": "text/plain"},
        )
        assert r.status_code == 200
        yield running


def _auth_of(request: dict[str, Any]) -> tuple[str, str]:
    user, _, password = base64.b64decode(request["headers"]["authorization"][6:]).decode().partition(":")
    return user, password


async def test_patient_and_practitioner_pushed_once_with_reference_payloads(
    pushing: Running, receiver: Receiver
) -> None:
    world = await build_world(pushing.client)
    await pushing.drain()
    await pushing.drain()  # the generate_patient_id revision comes through the feed too
    patients = [r for r in receiver.requests if r["path"] == "/mediator/patient"]
    assert len(patients) == 1  # rev 2 (patient_id added) maps to the same payload: deduplicated
    assert patients[0]["json"] == {
        "resourceType": "Patient",
        "identifier": [{"system": "cht", "use": "official", "value": world.patient}],
        "name": [{"use": "official", "family": "Pat Ient", "given": [None]}],
        "gender": "female",
        "birthDate": "1990-04-01",
    }
    assert _auth_of(patients[0]) == ("interop-client", SECRET)
    assert patients[0]["headers"]["content-type"] == "application/json"
    assert patients[0]["headers"]["accept"] == "application/json"
    # the CHW contact has no sex/date_of_birth: FHIR_practitioner's bare-string paths are required
    assert receiver.bodies("/fhir/Practitioner") == []
    patient = pushing.state.sandbox.store.get(MEDIC, world.patient)
    assert patient["patient_id"].isdigit() and patient["_rev"].startswith("2-")


async def test_required_path_missing_is_queued_and_retried_forever(
    pushing: Running, receiver: Receiver
) -> None:
    world = await build_world(pushing.client)
    await pushing.drain()
    store = pushing.state.sandbox.store
    # the CHW contact (role chw) lacks sex and date_of_birth: FHIR_practitioner cannot map
    queue = store.get(SENTINEL, f"task:outbound:{world.chw_contact}")
    assert queue["type"] == "task:outbound" and queue["queue"] == ["FHIR_practitioner"]
    assert queue["doc_id"] == world.chw_contact
    assert receiver.bodies("/fhir/Practitioner") == []
    await pushing.state.sentinel.retry_queued()
    assert store.get(SENTINEL, f"task:outbound:{world.chw_contact}")["queue"] == ["FHIR_practitioner"]
    # fix the doc: the new revision is pushed at once, and the next retry finds it already sent
    doc = store.get(MEDIC, world.chw_contact)
    r = await pushing.client.put(
        f"/medic/{doc['_id']}",
        json={**doc, "sex": "male", "date_of_birth": "1980-02-02"},
        headers={**POST_JSON, **ADMIN_AUTH},
    )
    assert r.status_code == 201
    await pushing.drain()
    assert receiver.bodies("/fhir/Practitioner") == [
        {
            "resourceType": "Practitioner",
            "gender": "male",
            "name": [{"system": "cht", "family": "Chw One", "given": [None]}],
            "identifier": {"use": "usual", "value": f"cht/{world.chw_contact}"},
            "birthDate": "1980-02-02",
            "telecom": [{"system": "phone", "use": "mobile", "value": "+254700000001"}],
            "active": True,  # "expr": true, coerced to source text and evaluated, as vm does
        }
    ]
    await pushing.state.sentinel.retry_queued()
    assert store.find(SENTINEL, f"task:outbound:{world.chw_contact}") is None
    assert len(receiver.bodies("/fhir/Practitioner")) == 1


async def test_encounter_from_the_chw_report_via_bulk_docs(pushing: Running, receiver: Receiver) -> None:
    world = await build_world(pushing.client)
    report = {
        "_id": "report-1",
        "type": "data_record",
        "form": "interop_follow_up",
        "content_type": "xml",
        "reported_date": 1700000000000,
        "fields": {"inputs": {"source": "task", "contact": {"_id": world.patient}}},
    }
    r = await pushing.client.post(
        "/medic/_bulk_docs", json={"docs": [report]}, headers={**POST_JSON, **world.chw_auth}
    )
    assert r.status_code == 201 and r.json()[0]["ok"] is True
    await pushing.drain()
    assert receiver.bodies("/mediator/encounter") == [
        {
            "resourceType": "Encounter",
            "identifier": [{"system": "cht", "use": "official", "value": world.patient}],
            "status": "finished",
            "class": "outpatient",
            "type": [{"text": "Community health worker visit"}],
            "subject": {"reference": f"Patient/?identifier={world.patient}"},
            "participant": [{"type": [{"text": "Community health worker"}]}],
        }
    ]


async def test_records_api_doc_is_not_pushed_and_unchanged_payload_is_not_resent(
    pushing: Running, receiver: Receiver
) -> None:
    world = await build_world(pushing.client)
    await pushing.drain()
    before = len(receiver.requests)
    r = await pushing.client.post(
        "/api/v2/records",
        json={"_meta": {"form": "interop_follow_up"}, "patient_uuid": world.patient},
        headers={**POST_JSON, **ADMIN_AUTH},
    )
    assert r.status_code == 200
    await pushing.drain()
    assert len(receiver.requests) == before  # form INTEROP_FOLLOW_UP !== 'interop_follow_up'
    store = pushing.state.sandbox.store
    doc = store.get(MEDIC, world.patient)
    await pushing.client.put(
        f"/medic/{doc['_id']}", json={**doc, "notes": "x"}, headers={**POST_JSON, **ADMIN_AUTH}
    )
    await pushing.drain()
    assert len(receiver.bodies("/mediator/patient")) == 1  # payload unchanged
    doc = store.get(MEDIC, world.patient)
    await pushing.client.put(
        f"/medic/{doc['_id']}", json={**doc, "name": "Renamed"}, headers={**POST_JSON, **ADMIN_AUTH}
    )
    await pushing.drain()
    pushed = receiver.bodies("/mediator/patient")
    assert len(pushed) == 2 and pushed[1]["name"][0]["family"] == "Renamed"
    info = store.get(SENTINEL, f"{world.patient}-info")
    assert [t["name"] for t in info["completed_tasks"]] == ["FHIR_patient", "FHIR_patient"]


async def test_failed_push_is_retried_on_the_schedule(
    make_config: Callable[..., SandboxConfig], receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = make_config(
        app_settings=pointed_at(receiver.url), outbound_retry_seconds=0.2, credentials={"openhim1": SECRET}
    )
    receiver.fail_next = 2
    async with running_sandbox(config) as running:
        r = await running.client.post(
            "/api/v1/people",
            json={"name": "Retry Me", "role": "patient", "sex": "male", "date_of_birth": "2001-01-01"},
            headers={**POST_JSON, **ADMIN_AUTH},
        )
        person = r.json()["id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answered = [q["answered"] for q in receiver.requests if q["path"] == "/mediator/patient"]
            if (
                201 in answered
                and running.state.sandbox.store.find(SENTINEL, f"task:outbound:{person}") is None
            ):
                break
            await asyncio.sleep(0.05)
        answered = [q["answered"] for q in receiver.requests if q["path"] == "/mediator/patient"]
        assert answered[:2] == [503, 503] and answered[-1] == 201
        assert answered.count(201) == 1
        assert running.state.sandbox.store.find(SENTINEL, f"task:outbound:{person}") is None
        # no credential anywhere but the vault (encrypted), nor in the logs
        store = running.state.sandbox.store
        for db in (MEDIC, SENTINEL, VAULT):
            assert SECRET not in json.dumps(list(store.all(db)))
    assert SECRET not in caplog.text
    assert "503" in caplog.text  # failures are logged, without the credential


async def test_missing_credential_fails_and_queues(
    make_config: Callable[..., SandboxConfig], receiver: Receiver
) -> None:
    async with running_sandbox(make_config(app_settings=pointed_at(receiver.url))) as running:
        r = await running.client.post(
            "/api/v1/people",
            json={"name": "No Creds", "role": "patient", "sex": "male", "date_of_birth": "2001-01-01"},
            headers={**POST_JSON, **ADMIN_AUTH},
        )
        await running.drain()
        queue = running.state.sandbox.store.get(SENTINEL, f"task:outbound:{r.json()['id']}")
        assert queue["queue"] == ["FHIR_patient"]
        assert receiver.requests == []


async def test_a_throwing_relevant_to_aborts_outbound_for_the_change(
    make_config: Callable[..., SandboxConfig], receiver: Receiver
) -> None:
    settings = pointed_at(receiver.url)
    settings["outbound"]["broken"] = {
        "relevant_to": "doc.missing.deeper === 1",
        "destination": {"base_url": receiver.url, "path": "/x"},
        "mapping": {"a": "doc._id"},
    }
    config = make_config(app_settings=settings, credentials={"openhim1": SECRET})
    async with running_sandbox(config) as running:
        await running.client.post(
            "/api/v1/people",
            json={"name": "P", "role": "patient", "sex": "male", "date_of_birth": "2001-01-01"},
            headers={**POST_JSON, **ADMIN_AUTH},
        )
        await running.drain()
        assert receiver.requests == []


async def test_retry_removes_the_first_queue_entry_as_sentinel_splice_does(
    make_config: Callable[..., SandboxConfig], receiver: Receiver
) -> None:
    from tests.support.live import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    person = "doc.type === 'person'"
    settings = {
        "transitions": {"mark_for_outbound": True},
        "outbound": {
            "a": {
                "relevant_to": person,
                "destination": {"base_url": dead, "path": "/a"},
                "mapping": {"id": "doc._id"},
            },
            "b": {
                "relevant_to": person,
                "destination": {"base_url": receiver.url, "path": "/b"},
                "mapping": {"id": "doc._id"},
            },
        },
    }
    receiver.fail_next = 1
    async with running_sandbox(make_config(app_settings=settings)) as running:
        store = running.state.sandbox.store
        await store_person(running, "p-1")
        await running.drain()
        assert store.get(SENTINEL, "task:outbound:p-1")["queue"] == ["a", "b"]
        await running.state.sentinel.retry_queued()
        # 'a' failed again and 'b' went through, yet splice(<name>) removed index 0: 'a'
        assert store.get(SENTINEL, "task:outbound:p-1")["queue"] == ["b"]
        assert [(q["answered"], q["json"]) for q in receiver.requests] == [
            (503, {"id": "p-1"}),
            (201, {"id": "p-1"}),
        ]
        await running.state.sentinel.retry_queued()  # 'b' already sent (same hash): dequeued, not resent
        assert store.find(SENTINEL, "task:outbound:p-1") is None
        assert len(receiver.requests) == 2


async def test_queue_entries_for_removed_configs_stay_queued(
    make_config: Callable[..., SandboxConfig], receiver: Receiver
) -> None:
    settings = {
        "transitions": {"mark_for_outbound": True},
        "outbound": {
            "gone": {
                "relevant_to": "doc.type === 'person'",
                "destination": {"base_url": receiver.url, "path": "/g"},
                "mapping": {"id": "doc._id", "missing": "doc.nope"},
            }
        },
    }
    async with running_sandbox(make_config(app_settings=settings)) as running:
        await store_person(running, "p-2")
        await running.drain()
        store = running.state.sandbox.store
        assert store.get(SENTINEL, "task:outbound:p-2")["queue"] == ["gone"]
        r = await running.client.put(
            "/api/v1/settings?replace=1", json={"outbound": {}}, headers={**POST_JSON, **ADMIN_AUTH}
        )
        assert r.status_code == 200
        await running.state.sentinel.retry_queued()
        assert store.get(SENTINEL, "task:outbound:p-2")["queue"] == ["gone"]  # 5.2 keeps it


async def store_person(running: Running, doc_id: str) -> None:
    r = await running.client.put(
        f"/medic/{doc_id}", json={"type": "person", "name": doc_id}, headers={**POST_JSON, **ADMIN_AUTH}
    )
    assert r.status_code == 201
