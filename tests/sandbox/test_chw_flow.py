"""The CHW page and the whole in-sandbox scenario with the shipped configuration:
place, CHW and patient through the API; the follow-up record; the CHW's task; the report (through
the page and through ``_bulk_docs``); the task completes; the Encounter reaches a loopback receiver
in the shape of docs/cht-contract.md §5."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from cht_interop.cht.config_loader import load_app_config
from cht_interop.sandbox.config import SandboxConfig, TaskRules
from cht_interop.sandbox.store import MEDIC
from tests.sandbox.conftest import ADMIN_AUTH, JSON, POST_JSON, Receiver, Running, running_sandbox
from tests.sandbox.helpers import CHW_PASSWORD, World, build_world

INTEROP_SECRET = "interop-Client-pw-7"


@pytest.fixture
async def shipped(make_config: Callable[..., SandboxConfig], receiver: Receiver) -> AsyncIterator[Running]:
    app = load_app_config()
    settings = app.settings
    for conf in settings["outbound"].values():
        conf["destination"]["base_url"] = receiver.url
    config = make_config(
        app_settings=settings,
        task_rules=TaskRules(modules={"tasks.js": app.tasks_js}),
        credentials={"interop-client": INTEROP_SECRET},
        translations=app.translations,
    )
    async with running_sandbox(config) as running:
        yield running


async def follow_up_record(sandbox: Running, world: World) -> str:
    r = await sandbox.client.post(
        "/api/v2/records",
        json={
            "_meta": {"form": "interop_follow_up"},
            "patient_uuid": world.patient,
            "service_request_id": "sr-42",
            "task_id": "task-42",
            "reason": "Missed ART refill",
            "requester": "Facility A",
            "requester_id": "fac-a",
        },
        headers={**POST_JSON, **ADMIN_AUTH},
    )
    assert r.status_code == 200 and r.json()["success"] is True
    return str(r.json()["id"])


async def task_states(sandbox: Running, world: World) -> list[str]:
    r = await sandbox.client.get(
        f"/sandbox/api/tasks?user={world.chw_name}", headers={**JSON, **world.chw_auth}
    )
    assert r.status_code == 200
    return [t["state"] for t in r.json()["tasks"]]


def expected_encounter(report: dict[str, Any], world: World, code: str, outcome: str, label: str) -> dict:
    iso = report_iso(report["reported_date"])
    return {
        "resourceType": "Encounter",
        "identifier": [
            {"system": "cht", "value": world.patient},
            {"system": "cht-report", "value": report["_id"]},
        ],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code},
        "type": [{"text": "Community health worker follow-up"}],
        "subject": {"reference": f"Patient/?identifier={world.patient}"},
        "participant": [{"type": [{"text": "Community health worker"}]}],
        "period": {"start": iso, "end": iso},
        "basedOn": [{"reference": "ServiceRequest/sr-42"}],
        "extension": [
            {
                "url": "urn:cht-interop:ltfu-outcome",
                "valueCodeableConcept": {
                    "coding": [{"system": "urn:cht-interop:CodeSystem/ltfu-outcome", "code": outcome}],
                    "text": label,
                },
            }
        ],
        "reasonCode": [{"text": "Met at home"}],
    }


def report_iso(ms: int) -> str:
    """JS ``new Date(ms).toISOString()``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


async def test_chw_page_flow_completes_the_task_and_pushes_the_encounter(
    shipped: Running, receiver: Receiver
) -> None:
    c = shipped.client
    world = await build_world(c)
    record_id = await follow_up_record(shipped, world)
    assert await task_states(shipped, world) == ["Ready"]

    r = await c.get("/sandbox/chw")
    assert r.status_code == 200 and 'action="/sandbox/chw/login"' in r.text
    r = await c.post("/sandbox/chw/login", data={"username": world.chw_name, "password": "wrong-password"})
    assert r.status_code == 401 and "Incorrect user name or password." in r.text
    r = await c.post("/sandbox/chw/login", data={"username": world.chw_name, "password": CHW_PASSWORD})
    assert r.status_code == 303 and "AuthSession=" in r.headers["set-cookie"]
    assert "HttpOnly" in r.headers["set-cookie"]

    r = await c.get("/sandbox/chw")
    assert "Pat Ient" in r.text and "Missed ART refill" in r.text
    # the task's title as the CHT's web app shows it: the shipped custom translation, not its key
    assert "LTFU follow-up" in r.text and "task.interop_follow_up.title" not in r.text
    link = html.unescape(re.search(r'href="(/sandbox/chw/tasks/[^"]+)"', r.text).group(1))
    r = await c.get(link)
    assert r.status_code == 200 and 'name="outcome"' in r.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)

    r = await c.post(link, data={"outcome": "returned_to_care", "method": "visit"})
    assert r.status_code == 403  # no CSRF token
    r = await c.post(link, data={"csrf": csrf, "method": "visit"})
    assert r.status_code == 400 and "Choose the outcome" in r.text
    r = await c.post(
        link, data={"csrf": csrf, "outcome": "returned_to_care", "method": "visit", "notes": "Met at home"}
    )
    assert r.status_code == 303
    done_page = r.headers["location"]
    report_id = done_page.split("done=")[1]

    report = shipped.state.sandbox.store.get(MEDIC, report_id)
    assert report["type"] == "data_record" and report["form"] == "interop_follow_up"
    assert report["content_type"] == "xml"
    assert report["contact"] == {
        "_id": world.chw_contact,
        "parent": {"_id": world.health_center, "parent": {"_id": world.district}},
    }
    assert report["from"] == "+254700000001"
    fields = report["fields"]
    assert fields["patient_uuid"] == world.patient and fields["patient_id"] == world.patient
    assert fields["source_id"] == record_id and fields["service_request_id"] == "sr-42"
    assert (fields["outcome"], fields["method"], fields["notes"]) == (
        "returned_to_care",
        "visit",
        "Met at home",
    )
    assert fields["inputs"]["source"] == "task"
    assert fields["inputs"]["contact"] == {"_id": world.patient, "name": "Pat Ient"}
    assert fields["patient_name"] == "Pat Ient"
    assert fields["meta"]["instanceID"].startswith("uuid:") and fields["meta"]["deprecatedID"] == ""
    assert report["hidden_fields"] == ["meta"]

    assert await task_states(shipped, world) == ["Completed"]
    r = await c.get(done_page)
    assert "No open follow-up tasks." in r.text and report_id in r.text

    await shipped.drain()
    assert receiver.bodies("/mediator/encounter") == [
        expected_encounter(report, world, "HH", "returned_to_care", "Found and returning to care")
    ]
    patients = receiver.bodies("/mediator/patient")
    assert len(patients) == 1 and patients[0]["identifier"][0]["value"] == world.patient
    assert patients[0]["gender"] == "female" and patients[0]["birthDate"] == "1990-04-01"


async def test_bulk_docs_report_completes_the_task_and_pushes_the_encounter(
    shipped: Running, receiver: Receiver
) -> None:
    c = shipped.client
    world = await build_world(c)
    record_id = await follow_up_record(shipped, world)
    report = {
        "_id": "chw-report-1",
        "type": "data_record",
        "form": "interop_follow_up",
        "content_type": "xml",
        "reported_date": shipped.state.sandbox.wall_ms(),
        "contact": {"_id": world.chw_contact, "parent": {"_id": world.health_center}},
        "fields": {
            "patient_uuid": world.patient,
            "patient_id": world.patient,
            "source_id": record_id,
            "service_request_id": "sr-42",
            "outcome": "not_located",
            "method": "phone",
            "notes": "Met at home",
            "inputs": {"source": "task", "source_id": record_id, "contact": {"_id": world.patient}},
        },
    }
    r = await c.post("/medic/_bulk_docs", json={"docs": [report]}, headers={**POST_JSON, **world.chw_auth})
    assert r.status_code == 201 and r.json()[0]["ok"] is True
    assert await task_states(shipped, world) == ["Completed"]
    await shipped.drain()
    (encounter,) = receiver.bodies("/mediator/encounter")
    assert encounter == expected_encounter(report, world, "VR", "not_located", "Not located")


async def test_chw_page_with_basic_auth_and_no_tasks(shipped: Running) -> None:
    world = await build_world(shipped.client)
    r = await shipped.client.get("/sandbox/chw", headers=world.chw_auth)
    assert r.status_code == 200 and "No open follow-up tasks." in r.text
    r = await shipped.client.get("/sandbox/chw/tasks/unknown-task", headers=world.chw_auth)
    assert r.status_code == 404


async def test_logout_needs_the_form_token(shipped: Running) -> None:
    c = shipped.client
    world = await build_world(c)
    r = await c.post("/sandbox/chw/login", data={"username": world.chw_name, "password": CHW_PASSWORD})
    assert r.status_code == 303
    await c.post("/sandbox/chw/logout", data={})
    page = await c.get("/sandbox/chw")
    assert "Log out" in page.text  # still logged in
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = await c.post("/sandbox/chw/logout", data={"csrf": csrf})
    assert r.status_code == 303
    assert 'action="/sandbox/chw/login"' in (await c.get("/sandbox/chw")).text
