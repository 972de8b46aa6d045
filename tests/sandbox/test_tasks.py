"""Tasks as the webapp computes them from the installed rule (cht-core shared-libs/rules-engine)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest

from cht_interop.cht.config_loader import load_app_config
from cht_interop.sandbox.config import SandboxConfig, TaskRules
from tests.sandbox.conftest import ADMIN_AUTH, JSON, POST_JSON, Running, running_sandbox, tasks_fixture_rules
from tests.sandbox.helpers import World, build_world

DAY = timedelta(days=1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def with_rules(make_config: Callable[..., SandboxConfig], clock: Clock) -> AsyncIterator[Running]:
    async with running_sandbox(make_config(task_rules=tasks_fixture_rules(), clock=clock)) as running:
        yield running


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def record(
    sandbox: Running, patient: str, when: datetime, form: str = "interop_follow_up", **fields: str
) -> str:
    r = await sandbox.client.post(
        "/api/v2/records",
        json={"_meta": {"form": form, "reported_date": ms(when)}, "patient_uuid": patient, **fields},
        headers={**POST_JSON, **ADMIN_AUTH},
    )
    assert r.status_code == 200
    return str(r.json()["id"])


async def tasks_of(sandbox: Running, user: str, auth: dict[str, str] = ADMIN_AUTH) -> list[dict]:
    r = await sandbox.client.get(f"/sandbox/api/tasks?user={user}", headers={**JSON, **auth})
    assert r.status_code == 200, r.text
    return list(r.json()["tasks"])


async def completed_report(sandbox: Running, world: World, when: datetime, **fields: object) -> None:
    report = {
        "type": "data_record",
        "form": "interop_follow_up",
        "content_type": "xml",
        "reported_date": ms(when),
        "fields": fields,
    }
    r = await sandbox.client.post(
        "/medic/_bulk_docs", json={"docs": [report]}, headers={**POST_JSON, **world.chw_auth}
    )
    assert r.status_code == 201 and r.json()[0].get("ok") is True, r.text


async def test_task_appears_for_the_chw_ready_in_its_window(with_rules: Running, clock: Clock) -> None:
    world = await build_world(with_rules.client)
    record_id = await record(with_rules, world.patient, clock.now)
    (task,) = await tasks_of(with_rules, world.chw_name)
    assert task["state"] == "Ready"
    assert task["owner"] == world.patient
    assert task["user"] == f"org.couchdb.user:{world.chw_name}"
    emission = task["emission"]
    assert emission["_id"] == f"{record_id}~interop-follow-up~interop-follow-up"
    assert (emission["startDate"], emission["dueDate"], emission["endDate"]) == (
        "2026-03-10",
        "2026-03-17",
        "2026-03-17",
    )
    (action,) = emission["actions"]
    assert action["form"] == "interop_follow_up" and action["type"] == "report"
    assert action["content"]["source"] == "task" and action["content"]["source_id"] == record_id
    assert action["content"]["contact"]["_id"] == world.patient


async def test_states_follow_the_dates_and_terminal_states_stick(with_rules: Running, clock: Clock) -> None:
    world = await build_world(with_rules.client)
    await record(with_rules, world.patient, clock.now + 3 * DAY)  # window opens in 3 days
    assert [t["state"] for t in await tasks_of(with_rules, world.chw_name)] == ["Draft"]
    clock.now += 4 * DAY
    assert [t["state"] for t in await tasks_of(with_rules, world.chw_name)] == ["Ready"]
    clock.now += 7 * DAY  # past the due date (end 0)
    (task,) = await tasks_of(with_rules, world.chw_name)
    assert task["state"] == "Failed"
    assert [h["state"] for h in task["stateHistory"]] == ["Draft", "Ready", "Failed"]
    await completed_report(with_rules, world, clock.now, patient_id=world.patient)
    assert [t["state"] for t in await tasks_of(with_rules, world.chw_name)] == ["Failed"]


async def test_resolved_only_by_a_linked_report_in_the_window(with_rules: Running, clock: Clock) -> None:
    world = await build_world(with_rules.client)
    record_id = await record(with_rules, world.patient, clock.now)
    clock.now += DAY
    # the reference's report shape: not linked to the patient, so the task never resolves
    await completed_report(
        with_rules, world, clock.now, inputs={"source": "task", "contact": {"_id": world.patient}}
    )
    assert [t["state"] for t in await tasks_of(with_rules, world.chw_name)] == ["Ready"]
    await completed_report(with_rules, world, clock.now, patient_id=world.patient, source_id=record_id)
    (task,) = await tasks_of(with_rules, world.chw_name)
    assert task["state"] == "Completed"


async def test_task_is_cancelled_when_no_longer_emitted(with_rules: Running, clock: Clock) -> None:
    world = await build_world(with_rules.client)
    record_id = await record(with_rules, world.patient, clock.now)
    assert [t["state"] for t in await tasks_of(with_rules, world.chw_name)] == ["Ready"]
    doc = (await with_rules.client.get(f"/medic/{record_id}", headers={**JSON, **ADMIN_AUTH})).json()
    r = await with_rules.client.delete(
        f"/medic/{record_id}?rev={doc['_rev']}", headers={**JSON, **ADMIN_AUTH}
    )
    assert r.status_code == 200
    assert [t["state"] for t in await tasks_of(with_rules, world.chw_name)] == ["Cancelled"]


async def test_only_users_who_see_the_patient_get_the_task(with_rules: Running, clock: Clock) -> None:
    world = await build_world(with_rules.client)
    other = await build_world(with_rules.client, chw_name="chw2")
    await record(with_rules, world.patient, clock.now)
    assert len(await tasks_of(with_rules, world.chw_name, world.chw_auth)) == 1
    assert await tasks_of(with_rules, other.chw_name, other.chw_auth) == []
    r = await with_rules.client.get(
        f"/sandbox/api/tasks?user={world.chw_name}", headers={**JSON, **other.chw_auth}
    )
    assert r.status_code == 403
    r = await with_rules.client.get("/sandbox/api/tasks?user=ghost", headers={**JSON, **ADMIN_AUTH})
    assert r.status_code == 404


async def test_applies_to_type_is_case_sensitive(
    make_config: Callable[..., SandboxConfig], clock: Clock
) -> None:
    lowercase = """
module.exports = [{
  name: 't', appliesTo: 'reports', appliesToType: ['interop_follow_up'],
  actions: [{ form: 'interop_follow_up' }],
  events: [{ id: 'e', start: 7, end: 0, days: 7 }],
}];
"""
    rules = TaskRules(modules={"tasks.js": lowercase})
    async with running_sandbox(make_config(task_rules=rules, clock=clock)) as running:
        world = await build_world(running.client)
        await record(running, world.patient, clock.now)  # stored as INTEROP_FOLLOW_UP
        assert await tasks_of(running, world.chw_name) == []


async def test_without_installed_rules_the_api_says_so(sandbox: Running) -> None:
    r = await sandbox.client.get("/sandbox/api/tasks?user=admin", headers={**JSON, **ADMIN_AUTH})
    assert r.status_code == 503 and r.json()["error"] == "no_task_rules"


# -- the shipped configuration's rule (cht/config/tasks.js, docs/cht-contract.md §3) ----------


@pytest.fixture
async def shipped(make_config: Callable[..., SandboxConfig], clock: Clock) -> AsyncIterator[Running]:
    app = load_app_config()
    config = make_config(
        app_settings=app.settings, task_rules=TaskRules(modules={"tasks.js": app.tasks_js}), clock=clock
    )
    async with running_sandbox(config) as running:
        yield running


async def test_shipped_rule_task_completes_on_the_follow_up_form(shipped: Running, clock: Clock) -> None:
    world = await build_world(shipped.client)
    record_id = await record(shipped, world.patient, clock.now, service_request_id="sr-1")
    (task,) = await tasks_of(shipped, world.chw_name)
    assert task["state"] == "Ready"
    assert task["emission"]["actions"][0]["content"]["service_request_id"] == "sr-1"
    clock.now += DAY
    await completed_report(
        shipped, world, clock.now, patient_uuid=world.patient, source_id=record_id, service_request_id="sr-1"
    )
    assert [t["state"] for t in await tasks_of(shipped, world.chw_name)] == ["Completed"]


async def test_shipped_rule_task_clears_on_the_cancel_record(shipped: Running, clock: Clock) -> None:
    world = await build_world(shipped.client)
    await record(shipped, world.patient, clock.now, service_request_id="sr-2")
    await record(
        shipped, world.patient, clock.now + DAY, form="interop_follow_up_cancel", service_request_id="sr-9"
    )
    assert [t["state"] for t in await tasks_of(shipped, world.chw_name)] == ["Ready"]  # other request
    await record(
        shipped, world.patient, clock.now + DAY, form="interop_follow_up_cancel", service_request_id="sr-2"
    )
    assert [t["state"] for t in await tasks_of(shipped, world.chw_name)] == ["Completed"]


async def test_a_throwing_rule_is_reported_not_hidden(
    make_config: Callable[..., SandboxConfig], clock: Clock
) -> None:
    rules = TaskRules(
        modules={"tasks.js": "module.exports = [{ appliesTo: 'reports', appliesIf: 1 }]; undefinedThing();"}
    )
    async with running_sandbox(make_config(task_rules=rules, clock=clock)) as running:
        r = await running.client.get("/sandbox/api/tasks?user=admin", headers={**JSON, **ADMIN_AUTH})
        assert r.status_code == 500
        assert r.json() == {
            "error": "task_rules_failed",
            "reason": "ReferenceError: undefinedThing is not defined",
        }


async def test_contact_tasks_with_default_resolution(
    make_config: Callable[..., SandboxConfig], clock: Clock
) -> None:
    rule = """
module.exports = [{
  name: 'visit', appliesTo: 'contacts', appliesToType: ['person'],
  appliesIf: function (c) { return c.contact.role === 'patient'; },
  actions: [{ form: 'home_visit' }],
  events: [{ id: 'v', days: 2, start: 2, end: 3 }],
}];
"""
    rules = TaskRules(modules={"tasks.js": rule})
    async with running_sandbox(make_config(task_rules=rules, clock=clock)) as running:
        world = await build_world(running.client)  # the patient is created "now" (wall clock)
        patient = (await running.client.get(f"/medic/{world.patient}", headers={**JSON, **ADMIN_AUTH})).json()
        clock.now = datetime.fromtimestamp(patient["reported_date"] / 1000, tz=UTC)
        (task,) = await tasks_of(running, world.chw_name)  # the CHW (role chw) gets no task of its own
        assert task["state"] == "Ready" and task["owner"] == world.patient
        report = {
            "type": "data_record",
            "form": "home_visit",
            "reported_date": patient["reported_date"] + 1000,
            "fields": {"patient_id": world.patient},
        }
        r = await running.client.post(
            "/medic/_bulk_docs", json={"docs": [report]}, headers={**POST_JSON, **world.chw_auth}
        )
        assert r.json()[0]["ok"] is True
        assert [t["state"] for t in await tasks_of(running, world.chw_name)] == ["Completed"]
