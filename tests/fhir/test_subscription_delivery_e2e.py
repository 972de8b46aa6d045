"""Issue 2's acceptance test: a rest-hook callback from the real server to a real receiver.

Both run on loopback ports: our app (``create_app``, whose lifespan starts the outbox worker) with
the embedded FHIR store, and a receiver that fails first and accepts afterwards. Everything is
driven over HTTP as a requesting system would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from typer.testing import CliRunner

from cht_interop.app import create_app
from cht_interop.cli import app as cli_app
from cht_interop.db import Database
from cht_interop.delivery import outbox
from tests.conftest import CLIENT_AUTH, make_settings
from tests.fhir.test_subscription_delivery import Hit, Receiver
from tests.support.live import serve_in_thread

pytestmark = pytest.mark.e2e

T = TypeVar("T")
TOKEN = "Bearer callback-secret-8f2d"


def eventually(probe: Callable[[], T | None], *, timeout: float = 30, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver(script=[(500, "text/plain", b"not yet"), (200, None, b"")])
    with serve_in_thread(r.app()) as base:
        yield r, base


def start_server(tmp_path: Path, database_url: str, **overrides: Any) -> Any:
    settings = make_settings(
        tmp_path,
        database_url,
        ALLOW_PRIVATE_CALLBACKS=True,  # the receiver is on loopback
        DELIVERY_INITIAL_BACKOFF_SECONDS=0.2,
        **overrides,
    )
    return serve_in_thread(create_app(settings))


def subscribe(fhir: httpx.Client, endpoint: str, identifier: str) -> dict[str, Any]:
    created = fhir.post(
        "/Subscription",
        json={
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "LTFU follow-up",
            "criteria": f"Encounter?identifier={identifier}",
            "channel": {
                "type": "rest-hook",
                "endpoint": endpoint,
                "payload": "application/fhir+json",
                "header": ["Content-Type: application/fhir+json", f"Authorization: {TOKEN}"],
            },
        },
    )
    assert created.status_code == 201, created.text
    sub_id = created.json()["id"]
    # as a HAPI client does: wait until the server has activated it
    return eventually(
        lambda: (s := fhir.get(f"/Subscription/{sub_id}").json()).get("status") == "active" and s,
        what="Subscription active",
    )


def encounter(identifier: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "FLD"},
        "identifier": [{"system": "cht", "value": identifier}],
    }


def job_of(database_url: str, notification_id: str) -> outbox.JobRecord:
    async def find() -> outbox.JobRecord:
        db = Database(database_url)
        try:
            async with db.transaction() as conn:
                for record in await outbox.list_jobs(conn, kind="fhir.subscription-notification", limit=100):
                    if record.notification_id == notification_id:
                        full = await outbox.get_job(conn, record.id)
                        assert full is not None
                        return full
        finally:
            await db.dispose()
        raise AssertionError(f"no job with notification id {notification_id}")

    return asyncio.run(find())


def test_callback_put_to_a_real_receiver_retried_once_then_never_again(
    receiver: tuple[Receiver, str], tmp_path: Path, database_url: str
) -> None:
    r, receiver_base = receiver
    with (
        start_server(tmp_path, database_url) as base,
        httpx.Client(base_url=f"{base}/fhir", auth=CLIENT_AUTH, timeout=20) as fhir,
    ):
        sub = subscribe(fhir, f"{receiver_base}/callback", "patient-x")
        other = fhir.post("/Encounter", json=encounter("patient-y"))  # matches nothing
        assert other.status_code == 201
        created = fhir.post("/Encounter", json=encounter("patient-x"))
        assert created.status_code == 201, created.text
        enc_id = created.json()["id"]
        stored = fhir.get(f"/Encounter/{enc_id}").json()

        hits: list[Hit] = eventually(lambda: len(r.hits) >= 2 and list(r.hits), what="a retried callback")
        # accepted on the second request: wait well past several polls and backoffs, nothing more comes
        time.sleep(1.5)
        assert len(r.hits) == 2

    first, second = hits
    assert first.method == second.method == "PUT"
    assert first.path == second.path == f"/callback/Encounter/{enc_id}"
    assert json.loads(second.body) == stored
    assert second.header("if-match") == [f'"{stored["meta"]["versionId"]}"']
    assert second.header("authorization") == [TOKEN]
    assert second.header("content-type")[0] == "application/fhir+json; charset=UTF-8"
    assert "application/fhir+json" in second.header("content-type")[1:]
    [nid] = {h.header("x-notification-id")[0] for h in hits}  # one stable id, on both attempts

    record = job_of(database_url, nid)
    assert record.status == "done" and record.ordering_key == f"Subscription/{sub['id']}"
    assert [(a.outcome, a.http_status) for a in record.attempt_log] == [("retry", 500), ("success", 200)]
    assert "callback-secret" not in json.dumps(record.payload) + (record.last_error or "")
    assert all("callback-secret" not in (a.error or "") for a in record.attempt_log)


def test_dead_letter_sets_the_subscription_to_error_and_a_retry_by_hand_delivers(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Receiver(script=[(503, "text/plain", b"down for maintenance")])
    with (
        serve_in_thread(r.app()) as receiver_base,
        start_server(tmp_path, database_url, DELIVERY_HORIZON_SECONDS=1) as base,
        httpx.Client(base_url=f"{base}/fhir", auth=CLIENT_AUTH, timeout=20) as fhir,
    ):
        sub = subscribe(fhir, f"{receiver_base}/cb", "patient-z")
        assert fhir.post("/Encounter", json=encounter("patient-z")).status_code == 201

        failed = eventually(
            lambda: (s := fhir.get(f"/Subscription/{sub['id']}").json()).get("status") == "error" and s,
            what="Subscription in error",
        )
        assert "HTTP 503" in failed["error"] and "down for maintenance" in failed["error"]
        assert TOKEN not in failed["error"]
        nid = r.hits[0].header("x-notification-id")[0]
        record = job_of(database_url, nid)
        assert record.status == "dead" and len(record.attempt_log) >= 2

        # the receiver is back; an operator retries the dead job from the CLI
        r.script = [(200, None, b"")]
        before = len(r.hits)
        monkeypatch.setenv("DATABASE_URL", database_url)
        result = CliRunner().invoke(cli_app, ["outbox", "retry", str(record.id)])
        assert result.exit_code == 0, result.output
        eventually(lambda: len(r.hits) > before and r.hits[-1], what="the retried delivery")
        time.sleep(1)
        assert len(r.hits) == before + 1
        assert r.hits[-1].header("x-notification-id") == [nid]
        assert job_of(database_url, nid).status == "done"
