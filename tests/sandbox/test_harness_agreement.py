"""The sandbox's task list agrees with the CHT's own rules engine on the same scenario.

``tests/cht/harness/trace.json`` is what cht-conf-test-harness (the real CHT rules engine in
Chromium) recorded while running the shipped configuration's specs: the contacts, each document
written, the clock, and the tasks the CHW saw. Each spec is replayed here against the sandbox
with the same shipped ``tasks.js``; the Ready tasks must be the same.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cht_interop.cht.config_loader import CONFIG_DIR, load_app_config
from cht_interop.sandbox.config import SandboxConfig, TaskRules
from tests.sandbox.conftest import ADMIN_AUTH, JSON, POST_JSON, running_sandbox

TRACE = Path(__file__).resolve().parents[1] / "cht" / "harness" / "trace.json"


def _specs() -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in json.loads(TRACE.read_text())["events"]:
        grouped[event["test"]].append(event)
    return dict(grouped)


def _as_harness_shows(task: dict[str, Any]) -> dict[str, Any]:
    emission = task["emission"]
    return {
        "state": task["state"],
        "owner": task["owner"],
        "forId": emission["forId"],
        "dueDate": emission["dueDate"],
        "startDate": emission["startDate"],
        "endDate": emission["endDate"],
        "actions": [
            {
                "type": a["type"],
                "form": a["form"],
                "content": {k: v for k, v in a["content"].items() if k != "contact"},
            }
            for a in emission["actions"]
        ],
    }


class Clock:
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize("spec", sorted(_specs()))
async def test_sandbox_tasks_match_the_harness(spec: str, make_config: Callable[..., SandboxConfig]) -> None:
    trace = json.loads(TRACE.read_text())
    events = _specs()[spec]
    clock = Clock()
    app = load_app_config()
    config = make_config(
        app_settings=app.settings, task_rules=TaskRules.from_directory(CONFIG_DIR), clock=clock
    )
    async with running_sandbox(config) as sandbox:
        c = sandbox.client
        r = await c.post(
            "/medic/_bulk_docs", json={"docs": trace["contacts"]}, headers={**POST_JSON, **ADMIN_AUTH}
        )
        assert all(row.get("ok") for row in r.json())
        chw = next(d for d in trace["contacts"] if d["_id"] == trace["user"])
        r = await c.post(
            "/api/v2/users",
            json={
                "username": "harness",
                "password": "Harness-pw-2026!",
                "roles": ["chw"],
                "place": chw["parent"]["_id"],
                "contact": chw["_id"],
            },
            headers={**POST_JSON, **ADMIN_AUTH},
        )
        assert r.status_code == 200, r.text
        compared = 0
        for event in events:
            clock.now = datetime.fromtimestamp(event["now"] / 1000, tz=UTC)
            if "write" in event:
                r = await c.post(
                    "/medic/_bulk_docs", json={"docs": [event["write"]]}, headers={**POST_JSON, **ADMIN_AUTH}
                )
                assert r.json()[0].get("ok"), r.text
            if "tasks" in event:
                r = await c.get("/sandbox/api/tasks?user=harness", headers={**JSON, **ADMIN_AUTH})
                ready = [_as_harness_shows(t) for t in r.json()["tasks"] if t["state"] == "Ready"]
                assert ready == event["tasks"], (spec, event["now"])
                compared += 1
        assert compared or spec == "accepts every outcome and method the contract names"
