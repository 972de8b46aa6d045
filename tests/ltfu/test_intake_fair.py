"""A long LTFU list's entry checks run off the event loop (``kit/fair.py``): the loop keeps
answering others while they run."""

from __future__ import annotations

import gc
import threading
from typing import Any

import httpx
import pytest

from cht_interop.kit.fair import OFF_LOOP_ITEMS
from cht_interop.kit.gc import released
from cht_interop.ltfu import intake
from cht_interop.ltfu import validation as V
from cht_interop.services import Services


async def test_a_long_lists_entries_are_checked_off_the_event_loop(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked_on: set[int] = set()
    check = V.validate_service_request

    def recorded(body: Any) -> V.FollowUpRequest:
        checked_on.add(threading.get_ident())
        return check(body)

    monkeypatch.setattr(V, "validate_service_request", recorded)
    entries = [{"resource": {"resourceType": "ServiceRequest"}} for _ in range(OFF_LOOP_ITEMS)]
    res = await client.post(
        "/mediator/service-request", json={"resourceType": "Bundle", "type": "batch", "entry": entries}
    )
    assert res.status_code == 200
    assert [e["response"]["status"] for e in res.json()["entry"]] == ["400"] * OFF_LOOP_ITEMS
    assert checked_on and threading.get_ident() not in checked_on


class FreedWhen:
    """Notes, when it is freed, whether Python's cyclic collector was running then."""

    def __init__(self, seen: list[bool]) -> None:
        self.seen = seen

    def __del__(self) -> None:
        self.seen.append(gc.isenabled())


async def test_a_long_lists_entries_are_freed_before_the_collector_resumes(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long list pauses the collector (``kit/gc.py``); entries still alive when it resumes are
    all walked by its first collection, holding the event loop. The list's entries (invalid ones
    too: an error's traceback must not keep them in a cycle) are gone before then."""
    monkeypatch.setattr(intake, "GC_PAUSE_ENTRIES", 20)  # checked inline: no worker thread's timing
    count = 50
    released().result(timeout=30)  # an earlier test's pause has resumed
    assert count < OFF_LOOP_ITEMS and gc.isenabled()
    seen: list[bool] = []
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": {"resourceType": "ServiceRequest"}, "note": FreedWhen(seen)} for _ in range(count)
        ],
    }
    answer = await services.ltfu.intake.request_follow_up_list(bundle)
    assert [e["response"]["status"] for e in answer.bundle["entry"]] == ["400"] * count
    assert seen == [False] * count  # every entry freed, each while the collector was still paused
    released().result(timeout=30)  # the pause ends once what the list released is freed
    assert gc.isenabled()
