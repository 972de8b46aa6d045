"""The LTFU follow-up end to end, as people run it: `cht-interop up --cht-sandbox` as its own process,
a requesting system's callback receiver on loopback, everything over real HTTP.

register endpoint + organization → place, CHW, patient in the CHT (sandbox API) → the patient arrives
by outbound push → follow-up requested → the CHT record and the CHW's task → the CHW completes it
(once through `/medic/_bulk_docs`, once through the CHW page) → Encounter stored, Task completed →
the requesting system receives `PUT <endpoint>/Encounter/<id>`.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live import free_port, run_process
from tests.support.receiver import CallbackReceiver, callback_receiver

pytestmark = pytest.mark.e2e

CLIENT = ("interop-client", "E2e-interop-pw-1")
CHT_ADMIN = ("admin", "E2e-Cht-admin-pw-1")
CHW_PASSWORD = "E2e-Chw-pw-123!"
POST_JSON = {"Content-Type": "application/json", "Accept": "application/json"}


@dataclass
class Stack:
    api: str
    cht: str
    receiver: CallbackReceiver
    callback_base: str

    def fhir(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.api}/fhir", auth=CLIENT, timeout=10)

    def mediator(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.api}/mediator", auth=CLIENT, timeout=10)

    def cht_admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.cht, auth=CHT_ADMIN, headers=POST_JSON, timeout=10)


def eventually(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy (the system is asynchronous by design)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.2)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    api_port, cht_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHT_", "INTEROP_", "DATA_DIR", "DATABASE_URL"))
    }
    env.update(
        {
            "INTEROP_CLIENT_PASSWORD": CLIENT[1],
            "CHT_USERNAME": CHT_ADMIN[0],
            "CHT_PASSWORD": CHT_ADMIN[1],
            "DELIVERY_POLL_SECONDS": "0.1",
            "DELIVERY_INITIAL_BACKOFF_SECONDS": "0.2",
            "LTFU_LIST_SYNC_MAX": "2",  # lists of 3 or more are staged and written in the background
        }
    )
    args = ["up", "--port", str(api_port), "--data-dir", str(tmp_path / "data")]
    args += ["--cht-sandbox", "--cht-sandbox-port", str(cht_port)]
    api, cht = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{cht_port}"
    with (
        callback_receiver(fail_first=1) as (receiver, receiver_url),
        run_process(args, env=env, ready_url=f"{api}/health/ready"),
    ):
        eventually(lambda: _answers(f"{cht}/sandbox/health"), "the CHT sandbox to start")
        yield Stack(api, cht, receiver, f"{receiver_url}/emr/fhir")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _ok(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in (statuses or (200, 201)), (response.request.url, response.text)
    body: dict[str, Any] = response.json()
    return body


def register_requesting_system(stack: Stack) -> str:
    with stack.mediator() as m:
        endpoint = _ok(
            m.post(
                "/endpoint",
                json={
                    "resourceType": "Endpoint",
                    "status": "active",
                    "identifier": [{"system": "official", "value": f"emr-callback-{uuid.uuid4()}"}],
                    "connectionType": {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                        "code": "hl7-fhir-rest",
                    },
                    "payloadType": [{"text": "Encounter"}],
                    "address": stack.callback_base,
                },
            ),
            201,
        )
        org_identifier = f"facility-{uuid.uuid4()}"
        _ok(
            m.post(
                "/organization",
                json={
                    "resourceType": "Organization",
                    "identifier": [{"system": "official", "value": org_identifier}],
                    "name": "Facility A",
                    "endpoint": [{"reference": f"Endpoint/{endpoint['id']}"}],
                },
            ),
            201,
        )
    return org_identifier


@dataclass
class World:
    chw_name: str
    patients: list[str]


def build_cht_world(stack: Stack, patient_count: int) -> World:
    """District > health centre (the CHW's area) > clinic with patients, all through the CHT API."""
    with stack.cht_admin() as cht:
        district = _ok(cht.post("/api/v1/places", json={"name": "District", "type": "district_hospital"}))[
            "id"
        ]
        centre = _ok(
            cht.post("/api/v1/places", json={"name": "Centre", "type": "health_center", "parent": district})
        )["id"]
        _ok(
            cht.post(
                "/api/v2/users",
                json={
                    "username": "chw1",
                    "password": CHW_PASSWORD,
                    "roles": ["chw"],
                    "place": centre,
                    "contact": {"name": "Chw One", "type": "person", "role": "chw", "phone": "+254700000001"},
                },
            )
        )
        clinic = _ok(cht.post("/api/v1/places", json={"name": "Clinic", "type": "clinic", "parent": centre}))[
            "id"
        ]
        patients = [
            _ok(
                cht.post(
                    "/api/v1/people",
                    json={
                        "name": f"Patient {i}",
                        "type": "person",
                        "role": "patient",
                        "sex": "female",
                        "date_of_birth": "1990-04-01",
                        "place": clinic,
                    },
                )
            )["id"]
            for i in range(patient_count)
        ]
    return World("chw1", patients)


def chw_tasks(stack: Stack, world: World) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{stack.cht}/sandbox/api/tasks",
        params={"user": world.chw_name},
        auth=(world.chw_name, CHW_PASSWORD),
        headers={"Accept": "application/json"},
    )
    tasks: list[dict[str, Any]] = _ok(r, 200)["tasks"]
    return tasks


def fhir_search(stack: Stack, rtype: str, **params: str) -> list[dict[str, Any]]:
    with stack.fhir() as f:
        bundle = _ok(f.get(f"/{rtype}", params=params), 200)
    return [e["resource"] for e in bundle.get("entry", [])]


def request_follow_up(stack: Stack, patient: str, org_identifier: str) -> tuple[str, dict[str, Any]]:
    with stack.mediator() as m:
        r = m.post(
            "/service-request",
            json={
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "subject": {"reference": f"Patient/{patient}"},
                "requester": {"reference": f"Organization/{org_identifier}"},
                "reasonCode": [{"text": "Missed ART refill"}],
            },
        )
    subscription = _ok(r, 201)
    service_request_id = r.headers["Location"].rstrip("/").split("/")[-1]
    return service_request_id, subscription


def task_for(stack: Stack, service_request_id: str) -> dict[str, Any]:
    (task,) = fhir_search(stack, "Task", **{"based-on": f"ServiceRequest/{service_request_id}"})
    return task


def complete_through_bulk_docs(stack: Stack, world: World, task: dict[str, Any], patient: str) -> str:
    """What the CHT app writes when the CHW submits the follow-up form (docs/cht-contract.md §4)."""
    content = task["emission"]["actions"][0]["content"]
    report_id = str(uuid.uuid4())
    report = {
        "_id": report_id,
        "type": "data_record",
        "form": "interop_follow_up",
        "content_type": "xml",
        "reported_date": int(time.time() * 1000),
        "fields": {
            "patient_uuid": patient,
            "patient_id": patient,
            "source_id": content["source_id"],
            "service_request_id": content["service_request_id"],
            "outcome": "returned_to_care",
            "method": "visit",
            "notes": "Agreed to come to the clinic on Monday",
            "inputs": {"source": "task", "contact": {"_id": patient}},
        },
    }
    r = httpx.post(
        f"{stack.cht}/medic/_bulk_docs",
        json={"docs": [report]},
        auth=(world.chw_name, CHW_PASSWORD),
        headers=POST_JSON,
    )
    assert r.status_code == 201 and r.json()[0]["ok"] is True, r.text
    return report_id


def complete_through_chw_page(stack: Stack, world: World, patient_name: str) -> None:
    with httpx.Client(base_url=stack.cht, timeout=10) as browser:
        r = browser.post("/sandbox/chw/login", data={"username": world.chw_name, "password": CHW_PASSWORD})
        assert r.status_code == 303, r.text
        page = browser.get("/sandbox/chw").text
        blocks = [b for b in page.split('<div class="task"')[1:] if patient_name in b]
        links = [m.group(1) for b in blocks if (m := re.search(r'href="(/sandbox/chw/tasks/[^"]+)"', b))]
        assert links, f"no open task for {patient_name} on the CHW page"
        link = html.unescape(links[0])
        form = browser.get(link).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        r = browser.post(
            link,
            data={"csrf": csrf.group(1), "outcome": "not_located", "method": "phone", "notes": "No answer"},
        )
        assert r.status_code == 303, r.text


def test_follow_up_round_trip_through_the_cht_sandbox(stack: Stack) -> None:
    org = register_requesting_system(stack)
    world = build_cht_world(stack, patient_count=2)
    first, second = world.patients

    # the CHT's outbound push brings both patients to the interop layer
    for patient in world.patients:
        eventually(lambda p=patient: fhir_search(stack, "Patient", identifier=p), f"Patient {patient} pushed")

    sr1, subscription = request_follow_up(stack, first, org)
    assert subscription["resourceType"] == "Subscription"
    assert subscription["criteria"].startswith("Encounter?")
    assert subscription["channel"]["endpoint"] == stack.callback_base
    sr2, _ = request_follow_up(stack, second, org)

    # the CHT record exists, the Task says so, and the CHW sees one task per patient
    for sr in (sr1, sr2):
        eventually(
            lambda s=sr: task_for(stack, s)["status"] in ("accepted", "in-progress"), f"Task of {sr} accepted"
        )
    tasks = eventually(lambda: len(chw_tasks(stack, world)) == 2 and chw_tasks(stack, world), "two CHW tasks")
    assert sorted(t["state"] for t in tasks) == ["Ready", "Ready"]
    first_task = next(t for t in tasks if t["emission"]["actions"][0]["content"]["contact"]["_id"] == first)

    # 1) completed as the CHT app would write it (bulk docs as the CHW)
    report_id = complete_through_bulk_docs(stack, world, first_task, first)
    done = eventually(
        lambda: task_for(stack, sr1)["status"] == "completed" and task_for(stack, sr1), "Task 1 done"
    )
    (encounter,) = fhir_search(stack, "Encounter", identifier=f"cht-report|{report_id}")
    assert {"reference": f"Encounter/{encounter['id']}"} in [
        o.get("valueReference") for o in done.get("output", [])
    ]
    patient_resource = fhir_search(stack, "Patient", identifier=first)[0]
    assert encounter["subject"]["reference"] == f"Patient/{patient_resource['id']}"
    assert encounter["class"]["code"] == "HH"

    # the requesting system is called back: HAPI's PUT <endpoint>/Encounter/<id>, retried after its 500
    received = stack.receiver.wait_for(2)
    failed, delivered = received[0], received[1]
    for attempt in (failed, delivered):
        assert (attempt.method, attempt.path) == ("PUT", f"/emr/fhir/Encounter/{encounter['id']}")
    assert failed.headers["x-notification-id"] == delivered.headers["x-notification-id"]
    body = json.loads(delivered.body)
    assert body["resourceType"] == "Encounter" and body["id"] == encounter["id"]
    assert delivered.headers["if-match"] == f'"{body["meta"]["versionId"]}"'
    assert eventually(
        lambda: (
            [t["state"] for t in chw_tasks(stack, world) if t["emission"]["forId"] == first] == ["Completed"]
        ),
        "the CHW's first task completed",
    )

    # 2) completed by the CHW on the page
    complete_through_chw_page(stack, world, "Patient 1")
    eventually(lambda: task_for(stack, sr2)["status"] == "completed", "Task 2 done")
    third = stack.receiver.wait_for(3)[2]
    assert third.method == "PUT" and third.path.startswith("/emr/fhir/Encounter/")
    encounter2 = json.loads(third.body)
    assert encounter2["class"]["code"] == "VR"
    assert encounter2["subject"]["reference"] == (
        f"Patient/{fhir_search(stack, 'Patient', identifier=second)[0]['id']}"
    )

    # nothing is delivered twice once accepted
    time.sleep(1.5)
    ids = [r.headers["x-notification-id"] for r in stack.receiver.requests[1:]]
    assert len(ids) == len(set(ids)) == 2


def test_a_staged_ltfu_list_reaches_the_chw(stack: Stack) -> None:
    """A list over LTFU_LIST_SYNC_MAX: 202 at once, written by the outbox, a task per patient in the CHT."""
    org = register_requesting_system(stack)
    world = build_cht_world(stack, patient_count=3)
    for patient in world.patients:
        eventually(lambda p=patient: fhir_search(stack, "Patient", identifier=p), f"Patient {patient} pushed")
    entries = [
        {
            "resource": {
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "subject": {"reference": f"Patient/{patient}"},
                "requester": {"reference": f"Organization/{org}"},
            }
        }
        for patient in [*world.patients, world.patients[0]]
    ]
    with stack.mediator() as m:
        res = m.post("/service-request", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
        assert res.status_code == 202, res.text
        assert [e["response"]["status"] for e in res.json()["entry"]] == ["202 Accepted"] * 3 + ["200 OK"]
        status_url = res.headers["Content-Location"]
        assert status_url.startswith(f"{stack.api}/mediator/ltfu-lists/")
        done = eventually(
            lambda: (r := m.get(status_url)).status_code == 200 and r.json(), "the list written"
        )
    assert [e["response"]["status"] for e in done["entry"]] == ["201 Created"] * 3 + ["200 OK"]
    for entry in done["entry"][:3]:
        sr_id = entry["response"]["location"].split("/")[1]
        eventually(lambda s=sr_id: task_for(stack, s)["status"] == "accepted", f"Task of {sr_id} accepted")
    tasks = eventually(
        lambda: len(chw_tasks(stack, world)) == 3 and chw_tasks(stack, world), "three CHW tasks"
    )
    assert sorted(t["emission"]["forId"] for t in tasks) == sorted(world.patients)
