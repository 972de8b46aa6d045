"""The console in a real browser (Chromium through Playwright) against ``cht-interop up --cht-sandbox``
run as its own process, with a requesting system's callback receiver on loopback.

An administrator logs in, follows a follow-up from request to the CHW's answer, sees its callback
dead-lettered while the receiver answers 500, and retries it from the Deliveries page once the
receiver is fixed. Each page is saved as a screenshot under ``tests/artifacts/console/``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright import async_api as playwright_api

from tests.ltfu.conftest import CONNECTION
from tests.sandbox.conftest import ADMIN as CHT_ADMIN
from tests.sandbox.conftest import JSON, POST_JSON
from tests.sandbox.helpers import World, build_world
from tests.support.live import free_port, run_process, serve_in_thread
from tests.support.receiver import CallbackReceiver

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
INTEROP = ("interop-client", "Console-e2e-pw-1")
ADMIN = ("admin", "Console-admin-pw-1")  # `up`'s administrator (ADMIN_CLIENT_ID defaults to admin)
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"


@pytest.fixture
def receiver() -> Iterator[tuple[CallbackReceiver, str]]:
    r = CallbackReceiver(fail_first=10**9)  # the requesting system is down until the test fixes it
    with serve_in_thread(r.app()) as url:
        yield r, url


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port, sandbox_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("CHT_", "FHIR_", "INTEROP_", "ADMIN_", "DATA_DIR", "DATABASE_URL", "DELIVERY_", "CONSOLE_")
        )
    }
    env.update(
        {
            "INTEROP_CLIENT_PASSWORD": INTEROP[1],
            "ADMIN_PASSWORD": ADMIN[1],
            "CHT_USERNAME": CHT_ADMIN[0],
            "CHT_PASSWORD": CHT_ADMIN[1],
            "DELIVERY_POLL_SECONDS": "0.1",
            "DELIVERY_INITIAL_BACKOFF_SECONDS": "0.2",
            "DELIVERY_HORIZON_SECONDS": "2",  # a callback failing for 2 s is dead-lettered
        }
    )
    args = ["up", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--cht-sandbox"]
    args += ["--cht-sandbox-port", str(sandbox_port)]
    with run_process(args, env=env, ready_url=f"http://127.0.0.1:{port}/health/ready", timeout=90):
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sandbox_port}"


async def eventually(check: Callable[[], Awaitable[Any]], what: str, within: float = 30) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def follow_up_through_the_sandbox(api: str, cht: str, callback: str) -> tuple[str, str]:
    """A requester, a CHT patient, a follow-up the CHW completes: returns the ServiceRequest id and
    the request's transaction id (X-Transaction-Id: OpenHIM's, had OpenHIM routed it).
    Also a plain rest-hook Subscription of the requesting system, with one notification due."""
    async with (
        httpx.AsyncClient(base_url=api, auth=INTEROP, timeout=30) as interop,
        httpx.AsyncClient(base_url=cht, timeout=30) as sandbox,
    ):
        ep = await interop.post(
            "/mediator/endpoint",
            json={
                "identifier": [{"value": "emr-cb"}],
                "connectionType": CONNECTION,
                "address": f"{callback}/fhir",
            },
        )
        assert ep.status_code == 201, ep.text
        org_body = {
            "identifier": [{"value": "emr"}],
            "name": ["District EMR"],
            "endpoint": [{"reference": f"Endpoint/{ep.json()['id']}"}],
        }
        org = await interop.post("/mediator/organization", json=org_body)
        assert org.status_code == 201, org.text
        world = await build_world(sandbox)

        async def patient_pushed() -> Any:
            return (
                (await interop.get("/fhir/Patient", params={"identifier": f"cht|{world.patient}"}))
                .json()
                .get("entry")
            )

        await eventually(patient_pushed, "the CHT's patient push")
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
        transaction_id = res.headers["X-Transaction-Id"]
        task = await eventually(lambda: chw_tasks(sandbox, world), "the CHW's task")
        await chw_completes(sandbox, world, sr_id, task[0]["emission"]["actions"][0]["content"]["source_id"])

        plain = {
            "resourceType": "Subscription",
            "status": "active",
            "reason": "the EMR's own subscription",
            "criteria": "Encounter?identifier=console-e2e",
            "channel": {
                "type": "rest-hook",
                "endpoint": f"{callback}/plain",
                "payload": "application/fhir+json",
            },
        }
        assert (await interop.post("/fhir/Subscription", json=plain)).status_code == 201
        enc = {
            "resourceType": "Encounter",
            "status": "finished",
            "identifier": [{"value": "console-e2e"}],
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        }
        assert (await interop.post("/fhir/Encounter", json=enc)).status_code == 201
        return sr_id, transaction_id


async def chw_tasks(sandbox: httpx.AsyncClient, world: World) -> list[dict[str, Any]]:
    r = await sandbox.get(f"/sandbox/api/tasks?user={world.chw_name}", headers={**JSON, **world.chw_auth})
    return list(r.json().get("tasks", [])) if r.status_code == 200 else []


async def chw_completes(sandbox: httpx.AsyncClient, world: World, sr_id: str, source_id: str) -> None:
    """The report the CHT app writes when the CHW submits the follow-up form."""
    report = {
        "_id": "console-e2e-report",
        "type": "data_record",
        "form": "interop_follow_up",
        "content_type": "xml",
        "reported_date": int(time.time() * 1000),
        "contact": {"_id": world.chw_contact, "parent": {"_id": world.health_center}},
        "fields": {
            "patient_uuid": world.patient,
            "patient_id": world.patient,
            "source_id": source_id,
            "service_request_id": sr_id,
            "outcome": "returned_to_care",
            "method": "visit",
            "notes": "Back on treatment",
            "inputs": {"source": "task", "source_id": source_id, "contact": {"_id": world.patient}},
        },
    }
    r = await sandbox.post(
        "/medic/_bulk_docs", json={"docs": [report]}, headers={**POST_JSON, **world.chw_auth}
    )
    assert r.status_code == 201, r.text


async def test_an_administrator_follows_a_follow_up_and_retries_its_dead_callback(
    up: tuple[str, str], receiver: tuple[CallbackReceiver, str]
) -> None:
    api, cht = up
    rec, callback = receiver
    sr_id, transaction_id = await follow_up_through_the_sandbox(api, cht, callback)
    SHOTS.mkdir(parents=True, exist_ok=True)

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = await browser.new_page(viewport={"width": 1366, "height": 900})
        page.set_default_timeout(15_000)

        async def shot(name: str) -> None:
            await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

        # not logged in: the login form; a wrong password is refused
        await page.goto(f"{api}/console/follow-ups")
        assert page.url.startswith(f"{api}/console/login")
        await page.fill("input[name=client_id]", ADMIN[0])
        await page.fill("input[name=password]", "wrong")
        await page.click("button[type=submit]")
        await playwright_api.expect(page.get_by_role("alert")).to_contain_text("Wrong client id or password")
        await shot("01-login-refused")
        await page.fill("input[name=password]", ADMIN[1])
        await page.click("button[type=submit]")
        assert page.url == f"{api}/console/follow-ups"  # back where the administrator was going

        # the follow-up list, then its timeline once the CHW's answer is in
        row = page.locator("table.list tbody tr")
        await playwright_api.expect(row).to_have_count(1)
        await shot("02-follow-ups")

        async def completed() -> bool:
            await page.goto(f"{api}/console/follow-ups?status=completed")
            return await row.count() == 1

        await eventually(completed, "the follow-up completed by the CHW's report")
        await row.locator("a").first.click()
        timeline = page.locator("ol.timeline")
        await playwright_api.expect(timeline).to_contain_text("Follow-up requested")
        await playwright_api.expect(timeline).to_contain_text("Follow-up record sent to the CHT")
        await playwright_api.expect(timeline).to_contain_text("stored (the CHW's answer)")
        await playwright_api.expect(page.locator("dl.facts")).to_contain_text(
            "Patient found and returning to care"
        )
        await playwright_api.expect(page.locator("dl.facts")).to_contain_text(f"ServiceRequest/{sr_id}")
        follow_up_url = page.url

        # the callbacks fail until they are dead letters
        await page.click("nav >> text=Deliveries")
        dead_rows = page.locator("table.list tbody tr")

        async def both_dead() -> bool:
            await page.goto(f"{api}/console/deliveries?view=dead")
            return await dead_rows.count() == 2

        await eventually(both_dead, "both callbacks dead-lettered", within=30)
        await playwright_api.expect(dead_rows.first).to_contain_text("gave up after")
        await playwright_api.expect(dead_rows.first).to_contain_text("HTTP 500")
        await shot("03-deliveries-dead")
        await dead_rows.first.locator("a").first.click()
        await playwright_api.expect(page.locator("form.discard button")).to_have_text("Discard")
        await shot("03b-dead-job")
        await page.goto(follow_up_url)
        await playwright_api.expect(timeline).to_contain_text("dead · HTTP 500 · gave up after")
        await shot("04-follow-up-timeline-dead-callback")

        # the requesting system fixes its receiver; the administrator retries its own Subscription's
        # notification from the Deliveries page and sees it delivered
        rec.fail_first = 0
        before = len(rec.requests)
        await page.goto(f"{api}/console/deliveries?view=dead")
        plain_row = dead_rows.filter(has_text="/plain")
        await plain_row.get_by_role("button", name="Retry").click()
        await playwright_api.expect(page.get_by_role("status")).to_contain_text("is waiting again")
        job_url = page.url.split("?")[0]

        async def delivered() -> bool:
            await page.goto(job_url)
            return "done" in await page.locator("h1 .badge").inner_text()

        await eventually(delivered, "the retried notification delivered")
        last = page.locator("table.list tbody tr").last
        await playwright_api.expect(last).to_contain_text("success")
        await playwright_api.expect(last).to_contain_text("200")
        await shot("05-delivery-retried-and-delivered")
        got = [r for r in rec.requests[before:] if r.path.startswith("/plain/Encounter/")]
        assert len(got) == 1 and got[0].method == "PUT"

        # the follow-up's own callback: retried the same way; its page records the new attempt
        await page.goto(f"{api}/console/deliveries?view=dead")
        await dead_rows.first.get_by_role("button", name="Retry").click()
        await playwright_api.expect(page.get_by_role("status")).to_contain_text("is waiting again")
        callback_job = page.url.split("?")[0]

        async def retried() -> bool:
            await page.goto(callback_job)
            return "done" in await page.locator("h1 .badge").inner_text()

        await eventually(retried, "the retried follow-up callback run")
        # delivered though the follow-up's Subscription was switched off after the callback was queued
        owed = [
            r for r in rec.requests[before:] if "/Encounter/" in r.path and not r.path.startswith("/plain/")
        ]
        assert len(owed) == 1 and owed[0].method == "PUT"
        await page.goto(follow_up_url)
        await shot("06-follow-up-timeline-after-retry")

        # the dashboard: every peer, the figures; and the other pages
        await page.click("nav >> text=Dashboard")
        peers = page.locator("table.peers")
        await playwright_api.expect(peers).to_contain_text("Database")
        for name in ("Database", "FHIR backend", "CHT"):
            await playwright_api.expect(peers.locator("tr", has_text=name).locator(".badge")).to_have_text(
                "up"
            )
        await playwright_api.expect(peers.locator("tr", has_text="OpenHIM").locator(".badge")).to_have_text(
            "not used"
        )
        await playwright_api.expect(page.locator(".figures")).to_contain_text("1 completed in the last 24 h")
        await shot("00-dashboard")
        for name, route in (("07-lists", "lists"), ("08-subscriptions", "subscriptions")):
            await page.goto(f"{api}/console/{route}")
            await shot(name)

        # clients: add one with a role through the form, see it listed (never a hash)
        await page.click("nav >> text=Clients")
        await page.fill("form.add-client input[name=client_id]", "district-emr")
        await page.fill("form.add-client input[name=name]", "District EMR")
        await page.fill("form.add-client input[name=password]", "District-emr-pw-1")
        await page.check("form.add-client input[value=requester]")
        await page.click("form.add-client button[type=submit]")
        await playwright_api.expect(page.get_by_role("status")).to_contain_text("Client 'district-emr' added")
        row = page.locator("table.clients tr", has_text="district-emr")
        await playwright_api.expect(row).to_contain_text("requester")
        await playwright_api.expect(page.locator("table.clients tr", has_text="(you)")).to_contain_text(
            "cannot remove yourself"
        )
        await shot("09-clients")

        # transactions: from the request's transaction id to everything done for the follow-up
        await page.click("nav >> text=Transactions")
        await playwright_api.expect(page.locator("table.list")).to_contain_text(
            "POST /mediator/service-request"
        )
        await shot("10-transactions")
        await page.fill("input[name=transaction_id]", transaction_id)
        await page.click("form.search button[type=submit]")
        journal = page.locator("table.list")
        await playwright_api.expect(page.locator("h1")).to_contain_text("What happened to follow-up")
        await playwright_api.expect(journal.locator("tr.here")).to_contain_text(
            "POST /mediator/service-request"
        )
        await playwright_api.expect(journal).to_contain_text("cht.record")
        await playwright_api.expect(journal).to_contain_text("fhir.subscription-notification")
        await shot("11-follow-up-transactions")
        await journal.locator("tr", has_text="cht.record").locator("a").first.click()
        await playwright_api.expect(
            page.locator("section.orchestration").filter(has_text="/medic/_bulk_docs")
        ).to_have_count(1)
        await playwright_api.expect(page.locator("dl.facts dd", has_text="transaction")).to_contain_text(
            transaction_id
        )
        await shot("12-transaction-detail")

        # logging out ends the session
        await page.get_by_role("button", name="Log out").click()
        assert page.url.startswith(f"{api}/console/login")
        await page.goto(f"{api}/console/")
        assert page.url.startswith(f"{api}/console/login")
        await browser.close()
