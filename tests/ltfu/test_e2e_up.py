"""The whole LTFU flow on real loopback HTTP: ``cht-interop up --cht-sandbox`` as its own process,
a requesting system's callback receiver, and a CHW completing the task in the sandbox."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.ltfu.conftest import CONNECTION
from tests.sandbox.conftest import ADMIN, JSON, POST_JSON
from tests.sandbox.helpers import build_world
from tests.support.live import free_port, run_process, serve_in_thread
from tests.support.receiver import CallbackReceiver

pytestmark = pytest.mark.e2e

INTEROP = ("interop-client", "Interop-e2e-pw-1")
CHT_ADMIN = ADMIN  # the sandbox's admin, as build_world uses it


@pytest.fixture
def receiver() -> Iterator[tuple[CallbackReceiver, str]]:
    r = CallbackReceiver()
    with serve_in_thread(r.app()) as url:
        yield r, url


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port, sandbox_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHT_", "FHIR_", "INTEROP_", "DATA_DIR", "DATABASE_URL"))
    }
    env.update(
        {
            "INTEROP_CLIENT_PASSWORD": INTEROP[1],
            "CHT_USERNAME": CHT_ADMIN[0],
            "CHT_PASSWORD": CHT_ADMIN[1],
            "DELIVERY_POLL_SECONDS": "0.1",
        }
    )
    args = ["up", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--cht-sandbox"]
    args += ["--cht-sandbox-port", str(sandbox_port)]
    with run_process(args, env=env, ready_url=f"http://127.0.0.1:{port}/health/ready", timeout=90):
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sandbox_port}"


async def test_follow_up_from_request_to_callback(
    up: tuple[str, str], receiver: tuple[CallbackReceiver, str]
) -> None:
    api, cht = up
    rec, callback = receiver
    async with (
        httpx.AsyncClient(base_url=api, auth=INTEROP, timeout=30) as interop,
        httpx.AsyncClient(base_url=cht, timeout=30) as sandbox,
    ):
        # the requesting system registers its callback and itself
        ep = await interop.post(
            "/mediator/endpoint",
            json={
                "identifier": [{"value": "emr-cb"}],
                "connectionType": CONNECTION,
                "address": f"{callback}/fhir",
            },
        )
        assert ep.status_code == 201, ep.text
        org = await interop.post(
            "/mediator/organization",
            json={
                "identifier": [{"value": "emr"}],
                "name": ["EMR"],
                "endpoint": [{"reference": f"Endpoint/{ep.json()['id']}"}],
            },
        )
        assert org.status_code == 201, org.text

        # the CHT side: a CHW and a patient, pushed to the mediator by the CHT's outbound push
        world = await build_world(sandbox)
        patient_found = await _poll(interop, "/fhir/Patient", {"identifier": f"cht|{world.patient}"})
        assert patient_found

        res = await interop.post(
            "/mediator/service-request",
            json={
                "resourceType": "ServiceRequest",
                "intent": "order",
                "status": "active",
                "subject": {"reference": f"Patient/{world.patient}"},
                "requester": {"reference": "Organization/emr"},
                "reasonCode": [{"text": "Missed ART refill"}],
            },
        )
        assert res.status_code == 201, res.text
        sr_id = res.headers["Location"].rsplit("/", 1)[1]

        # the worker puts the record in the CHT; the CHW sees the task
        tasks = await _poll_tasks(sandbox, world)
        (task,) = tasks
        content = task["emission"]["actions"][0]["content"]
        assert content["service_request_id"] == sr_id
        # the CHT has the record before the worker has recorded it on the Task
        await _poll(interop, "/fhir/Task", {"based-on": f"ServiceRequest/{sr_id}", "status": "accepted"})

        # the CHW completes it (the app writes this report)
        report = {
            "_id": "e2e-report-1",
            "type": "data_record",
            "form": "interop_follow_up",
            "content_type": "xml",
            "reported_date": int(time.time() * 1000),
            "contact": {"_id": world.chw_contact, "parent": {"_id": world.health_center}},
            "fields": {
                "patient_uuid": world.patient,
                "patient_id": world.patient,
                "source_id": content["source_id"],
                "service_request_id": sr_id,
                "outcome": "returned_to_care",
                "method": "visit",
                "notes": "Back on treatment",
                "inputs": {
                    "source": "task",
                    "source_id": content["source_id"],
                    "contact": {"_id": world.patient},
                },
            },
        }
        r = await sandbox.post(
            "/medic/_bulk_docs", json={"docs": [report]}, headers={**POST_JSON, **world.chw_auth}
        )
        assert r.status_code == 201, r.text

        # the requesting system is called back with the Encounter
        (got,) = rec.wait_for(1, timeout=60)
        assert got.method == "PUT" and got.path.startswith("/fhir/Encounter/")
        encounter = orjson.loads(got.body)
        assert encounter["basedOn"] == [{"reference": f"ServiceRequest/{sr_id}"}]
        assert encounter["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "returned_to_care"
        (done,) = await _poll(
            interop, "/fhir/Task", {"based-on": f"ServiceRequest/{sr_id}", "status": "completed"}
        )
        assert done["resource"]["businessStatus"]["coding"][0]["code"] == "returned_to_care"
        assert (await _poll_tasks(sandbox, world, state="Completed"))[0]["state"] == "Completed"


async def _poll(client: httpx.AsyncClient, path: str, params: dict[str, str], within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        body = (await client.get(path, params=params)).json()
        if body.get("entry"):
            return body["entry"]
        await _sleep()
    raise AssertionError(f"nothing at {path} {params}")


async def _poll_tasks(
    sandbox: httpx.AsyncClient, world: Any, state: str | None = None, within: float = 60
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        r = await sandbox.get(f"/sandbox/api/tasks?user={world.chw_name}", headers={**JSON, **world.chw_auth})
        tasks = r.json().get("tasks", []) if r.status_code == 200 else []
        if tasks and (state is None or all(t["state"] == state for t in tasks)):
            return list(tasks)
        await _sleep()
    raise AssertionError("no CHW task")


async def _sleep() -> None:
    await asyncio.sleep(0.2)
