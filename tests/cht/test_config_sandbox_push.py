"""The shipped outbound push in the CHT sandbox: reports written through ``/medic/_bulk_docs`` with
any optional part missing still reach the mediator, and none is left in Sentinel's retry queue.

The sandbox runs the shipped settings (its Sentinel evaluates the mappings in V8, as the CHT does)
pushing to a loopback receiver that answers as ``/mediator/encounter`` does: 201 for an Encounter
its validation accepts, 400 otherwise.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cht_interop.cht.config_loader import load_app_config
from cht_interop.fhir.errors import InvalidRequest
from cht_interop.ltfu.validation import validate_encounter
from cht_interop.sandbox.config import SandboxConfig
from cht_interop.sandbox.runner import point_outbound
from cht_interop.sandbox.store import MEDIC, SENTINEL
from tests.sandbox.conftest import ADMIN, ADMIN_AUTH, POST_JSON, Running, running_sandbox
from tests.support.live import serve_in_thread

PATIENT = "3f1c7c1e-6c1a-4a55-9b8f-0e3c0b5d1a22"
PUSH_PASSWORD = "Push-pw-for-interop-1"

REPORT: dict[str, Any] = {
    "type": "data_record",
    "form": "interop_follow_up",
    "content_type": "xml",
    "reported_date": 1764072000000,
    "contact": {"_id": "chw_contact"},
    "fields": {
        "patient_uuid": PATIENT,
        "patient_id": PATIENT,
        "source_id": "interop-follow-up-fu-1",
        "service_request_id": "sr-77",
        "outcome": "returned_to_care",
        "method": "visit",
        "notes": "Back on treatment",
        "inputs": {"source": "task", "contact": {"_id": PATIENT, "name": "Jane Patient"}},
        "meta": {"instanceID": "uuid:1"},
    },
}
OPTIONAL_PARTS = ["reported_date", "contact", "content_type", *(f"fields.{key}" for key in REPORT["fields"])]


class Mediator:
    """Records what the CHT pushes; answers like ``/mediator/encounter``'s validation."""

    def __init__(self) -> None:
        self.encounters: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.lock = threading.Lock()

    async def encounter(self, request: Request) -> Response:
        body = json.loads(await request.body())
        try:
            validate_encounter(body)
        except InvalidRequest as exc:
            with self.lock:
                self.refused.append(str(exc))
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=400)
        with self.lock:
            self.encounters.append(body)
        return JSONResponse(body, status_code=201)

    async def patient(self, _request: Request) -> Response:
        return JSONResponse({}, status_code=201)


@pytest.fixture
def mediator() -> Iterator[tuple[Mediator, str]]:
    mediator = Mediator()
    app = Starlette(
        routes=[
            Route("/mediator/encounter", mediator.encounter, methods=["POST"]),
            Route("/mediator/patient", mediator.patient, methods=["POST"]),
        ]
    )
    with serve_in_thread(app) as url:
        yield mediator, url


@pytest.fixture
async def cht(tmp_path: Path, mediator: tuple[Mediator, str]) -> AsyncIterator[Running]:
    settings, keys = point_outbound(
        load_app_config().settings, base_url=mediator[1], username="interop-client"
    )
    config = SandboxConfig(
        data_path=tmp_path / "cht-sandbox.sqlite3",
        admin_username=ADMIN[0],
        admin_password=ADMIN[1],
        app_settings=settings,
        credentials=dict.fromkeys(keys, PUSH_PASSWORD),
        outbound_retry_seconds=3600,
    )
    async with running_sandbox(config) as running:
        yield running


def _without(doc: dict[str, Any], dotted: str) -> dict[str, Any]:
    copy = json.loads(json.dumps(doc))
    *parents, leaf = dotted.split(".")
    target = copy
    for part in parents:
        target = target[part]
    del target[leaf]
    return copy


async def test_reports_lacking_any_optional_part_all_reach_the_mediator(
    cht: Running, mediator: tuple[Mediator, str]
) -> None:
    received, _url = mediator
    docs = [{**_without(REPORT, missing), "_id": f"report-without-{missing}"} for missing in OPTIONAL_PARTS]
    docs.append({**REPORT, "_id": "report-complete"})
    r = await cht.client.post("/medic/_bulk_docs", json={"docs": docs}, headers={**POST_JSON, **ADMIN_AUTH})
    assert r.status_code == 201 and all(row.get("ok") for row in r.json()), r.text

    await cht.drain()

    assert received.refused == []
    pushed = {
        next(i["value"] for i in encounter["identifier"] if i["system"] == "cht-report")
        for encounter in received.encounters
    }
    assert pushed == {doc["_id"] for doc in docs}
    store = cht.state.sandbox.store
    assert list(store.all(SENTINEL, prefix="task:outbound:")) == []  # nothing left to retry forever
    by_report = {
        next(i["value"] for i in e["identifier"] if i["system"] == "cht-report"): e
        for e in received.encounters
    }
    assert "period" not in by_report["report-without-reported_date"]
    assert by_report["report-complete"]["period"]["start"] == "2025-11-25T12:00:00.000Z"
    assert store.find(MEDIC, "report-complete") is not None


async def test_a_report_naming_no_patient_is_not_queued(cht: Running, mediator: tuple[Mediator, str]) -> None:
    received, _url = mediator
    bare = {"_id": "report-bare", "type": "data_record", "form": "interop_follow_up"}
    r = await cht.client.post("/medic/_bulk_docs", json={"docs": [bare]}, headers={**POST_JSON, **ADMIN_AUTH})
    assert r.status_code == 201

    await cht.drain()

    assert received.encounters == [] and received.refused == []
    assert list(cht.state.sandbox.store.all(SENTINEL, prefix="task:outbound:")) == []
