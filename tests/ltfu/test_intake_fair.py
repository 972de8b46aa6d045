"""A long LTFU list's entry checks run off the event loop (``kit/fair.py``): the loop keeps
answering others while they run."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from cht_interop.kit.fair import OFF_LOOP_ITEMS
from cht_interop.ltfu import validation as V


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
