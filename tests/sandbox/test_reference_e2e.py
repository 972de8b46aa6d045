"""The reference deployment's own end-to-end scenario against ``cht-interop up --cht-sandbox``.

medic/cht-interoperability ``mediator/test/ltfu-flow.spec.ts`` (with the bodies its factories
build, ``cht-resource-factories.ts`` and ``fhir-resource-factories.ts``), call for call: the
mediator's health, an Endpoint and an Organization, a place and a CHW user made by the CHT admin,
a patient made by the CHW, a ServiceRequest, the CHW's completed follow-up posted through
``/medic/_bulk_docs`` with ``new_edits: false``, and the Encounter found by the Subscription's
criteria. Only URLs and credentials differ: the callback address is a loopback receiver (the
reference's is a public echo service). Where the reference sleeps (2 s) this test polls the same
request until it answers, so it neither races nor waits longer than needed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live import free_port, run_process
from tests.support.receiver import CallbackReceiver, callback_receiver

pytestmark = pytest.mark.e2e

FHIR = ("interop-client", "Reference-e2e-pw-1")  # FHIR_USERNAME / FHIR_PASSWORD
CHT = ("admin", "Reference-cht-pw-1")  # CHT_USERNAME / CHT_PASSWORD
VALID_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
VALID_CODE = "hl7-fhir-rest"


@pytest.fixture
def receiver() -> Iterator[tuple[CallbackReceiver, str]]:
    with callback_receiver() as pair:
        yield pair


@pytest.fixture
def up(tmp_path: Path, database_url: str) -> Iterator[tuple[str, str]]:
    """``up --cht-sandbox`` as its own process, on each database backend."""
    port, sandbox_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHT_", "FHIR_", "INTEROP_", "DATA_DIR", "DATABASE_URL"))
    }
    env.update(
        {
            "INTEROP_CLIENT_PASSWORD": FHIR[1],
            "CHT_USERNAME": CHT[0],
            "CHT_PASSWORD": CHT[1],
            "DELIVERY_POLL_SECONDS": "0.1",
            "DATABASE_URL": database_url,
        }
    )
    args = ["up", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--cht-sandbox"]
    args += ["--cht-sandbox-port", str(sandbox_port)]
    with run_process(args, env=env, ready_url=f"http://127.0.0.1:{port}/health/ready", timeout=90):
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sandbox_port}"


async def _until(client: httpx.AsyncClient, path: str, *, total: int, within: float = 30) -> dict[str, Any]:
    """Repeat the reference's GET until the search has ``total`` entries (its fixed sleep, made exact)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        response = await client.get(path)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body.get("total") == total or asyncio.get_running_loop().time() > deadline:
            return body
        await asyncio.sleep(0.1)


class EncounterNotFound(AssertionError):
    """The last step: the Encounter is not found by the Subscription's criteria."""


async def test_the_reference_ltfu_flow_passes_against_up_with_the_sandbox(
    up: tuple[str, str], receiver: tuple[CallbackReceiver, str]
) -> None:
    fhir_url, cht_url = up
    _rec, callback = receiver
    async with (
        httpx.AsyncClient(base_url=fhir_url, auth=FHIR, timeout=30) as fhir,
        httpx.AsyncClient(base_url=cht_url, auth=CHT, timeout=30) as cht_admin,
    ):
        # configureCHT: a place, then a CHW user (UserFactory) in a new place under it
        r = await cht_admin.post(
            "/api/v1/places", json={"name": "CHP Branch Two", "type": "district_hospital"}
        )
        assert r.status_code == 200 and r.json()["ok"] is True, r.text
        place_id = r.json()["id"]
        user = {
            "password": "Dakar1234",
            "username": "maria",
            "type": "chw",
            "place": {"name": "CHP Branch One", "type": "district_hospital", "parent": place_id},
            "contact": {"name": "Maria Blob", "phone": "+2868917046"},
        }
        r = await cht_admin.post("/api/v2/users", json=user)
        assert r.status_code == 200, r.text
        contact_id = r.json()["contact"]["id"]
        chw_name, chw_password = user["username"], user["password"]

        r = await fhir.get("/mediator/")
        assert r.status_code == 200 and r.json()["status"] == "success", r.text

        identifier = [{"system": "official", "value": "test-endpoint"}]
        endpoint = {
            "connectionType": {"system": VALID_SYSTEM, "code": VALID_CODE},
            "identifier": identifier,
            "status": "active",
            "address": f"{callback}/callback",
            "payloadType": [{"text": "application/json"}],
        }
        r = await fhir.post("/mediator/endpoint", json=endpoint)
        assert r.status_code == 201, r.text
        endpoint_id = r.json()["id"]
        r = await fhir.get("/fhir/Endpoint/?identifier=test-endpoint")
        assert r.status_code == 200 and r.json()["total"] == 1, r.text

        organization = {
            "name": ["athena"],
            "endpoint": [{"reference": f"Endpoint/{endpoint_id}"}],
            "identifier": [{"system": "official", "value": "test-org"}],
        }
        r = await fhir.post("/mediator/organization", json=organization)
        assert r.status_code == 201, r.text
        r = await fhir.get("/fhir/Organization/?identifier=test-org")
        assert r.status_code == 200 and r.json()["total"] == 1, r.text

        # the CHW creates the patient (PatientFactory); the CHT pushes it to the mediator
        patient = {
            "name": "John Test",
            "phone": "+2548277217095",
            "date_of_birth": "1980-06-06",
            "sex": "male",
            "type": "person",
            "role": "patient",
            "contact_type": "patient",
            "place": place_id,
        }
        r = await cht_admin.post("/api/v1/people", json=patient, auth=(chw_name, chw_password))
        assert r.status_code == 200 and r.json()["ok"] is True, r.text
        patient_id = r.json()["id"]
        found = await _until(fhir, f"/fhir/Patient/?identifier={patient_id}", total=1)
        assert found["total"] == 1, found

        service_request = {
            "intent": "order",
            "subject": {"reference": f"Patient/{patient_id}"},
            "requester": {"reference": "Organization/test-org"},
            "status": "active",
        }
        r = await fhir.post("/mediator/service-request", json=service_request)
        assert r.status_code == 201, r.text
        encounter_url = r.json()["criteria"]

        # the CHW's completed task (TaskReportFactory), replicated as the app does
        task_report = {
            "docs": [
                {
                    "form": "interop_follow_up",
                    "type": "data_record",
                    "contact": {
                        "name": "Maria Blob",
                        "phone": "+2868917046",
                        "_id": contact_id,
                        "parent": {"_id": place_id},
                    },
                    "from": "",
                    "hidden_fields": ["meta"],
                    "fields": {
                        "inputs": {
                            "source": "task",
                            "is_covid_vaccine_referral": "",
                            "contact": {"_id": patient_id},
                        },
                        "vaccination_details": {"interop_follow_up": "yes"},
                        "meta": {"instanceID": "uuid:0fbe39f1-8aa5-477a-89ea-863831766766"},
                        "contact_type": "1patient",
                        "place": place_id,
                    },
                    "_id": "{{$guid}}",
                    "_rev": "1-{{$guid}}",
                }
            ],
            "new_edits": False,
        }
        r = await cht_admin.post("/medic/_bulk_docs", json=task_report, auth=(chw_name, chw_password))
        assert r.status_code == 201, r.text

        encounters = await _until(fhir, f"/fhir/{encounter_url}", total=1)
        if encounters["total"] != 1:
            raise EncounterNotFound(encounters)
        (entry,) = encounters["entry"]
        assert entry["resource"]["resourceType"] == "Encounter"
