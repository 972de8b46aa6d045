"""End to end on loopback: our app (store + outbox worker) notifies a real callback receiver when a
written Encounter matches a Subscription, as HAPI would: PUT <endpoint>/Encounter/<id>."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from cht_interop.app import create_app
from tests.conftest import CLIENT_AUTH, make_settings
from tests.support.live import serve_in_thread
from tests.support.receiver import callback_receiver


def test_encounter_notified_to_callback_with_retry(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, ALLOW_PRIVATE_CALLBACKS=True)
    app = create_app(settings, run_worker=True)
    with (
        callback_receiver(fail_first=1) as (receiver, callback),
        serve_in_thread(app) as base,
        httpx.Client(base_url=f"{base}/fhir", auth=CLIENT_AUTH, timeout=30) as fhir,
    ):
        pid = fhir.post(
            "/Patient",
            json={"resourceType": "Patient", "identifier": [{"system": "cht", "value": "uuid-e2e"}]},
        ).json()["id"]
        sub = fhir.post(
            "/Subscription",
            json={
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "follow-up",
                "criteria": "Encounter?identifier=uuid-e2e",
                "channel": {
                    "type": "rest-hook",
                    "endpoint": f"{callback}/callback",
                    "payload": "application/fhir+json",
                    "header": ["Content-Type: application/fhir+json"],
                },
            },
        )
        assert sub.status_code == 201
        # the CHT outbound shape: a string class, the subject as an inline match URL
        r = fhir.post(
            "/Encounter",
            json={
                "resourceType": "Encounter",
                "status": "finished",
                "class": "outpatient",
                "identifier": [{"system": "cht", "value": "uuid-e2e"}],
                "subject": {"reference": "Patient/?identifier=uuid-e2e"},
            },
        )
        assert r.status_code == 201
        eid = r.json()["id"]
        first, second = receiver.wait_for(2)
        assert first.method == second.method == "PUT"
        assert second.path == f"/callback/Encounter/{eid}"
        assert second.headers["if-match"] == '"1"'
        assert first.headers["x-notification-id"] == second.headers["x-notification-id"]
        body = json.loads(second.body)
        assert body["id"] == eid and body["subject"]["reference"] == f"Patient/{pid}"
        assert "class" not in body
        # an update is a new notification with its own id; an unchanged update is none
        updated = fhir.put(f"/Encounter/{eid}", json={**r.json(), "status": "cancelled"}).json()
        fhir.put(f"/Encounter/{eid}", json=updated)
        third = receiver.wait_for(3)[2]
        assert third.headers["if-match"] == '"2"'
        assert third.headers["x-notification-id"] != second.headers["x-notification-id"]
        assert json.loads(third.body)["status"] == "cancelled"
        assert len(receiver.requests) == 3
