"""Peers failing under load: the CHT down for a while, the requesting system's receiver flaky then
gone. ``serve`` and ``worker`` run as their own processes on SQLite; everything is loopback HTTP.

What a facility and a CHT implementer would check afterwards: every acknowledged follow-up has
exactly one CHT record and one Task; every Encounter reached the receiver, exactly once per
notification id, after a bounded number of attempts.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLIENT_AUTH
from tests.ltfu.conftest import encounter_body
from tests.reliability.stack import (
    FlakyReceiver,
    add_patients,
    eventually,
    register,
    running_stack,
    submit_all,
)
from tests.support.live import free_port

pytestmark = pytest.mark.e2e

FOLLOW_UPS = 2000


async def all_of(client: httpx.AsyncClient, resource_type: str) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    url: str | None = f"/fhir/{resource_type}?_count=1000"
    while url:
        page = (await client.get(url)).json()
        found += [e["resource"] for e in page.get("entry", [])]
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    return found


async def test_cht_down_for_a_while_during_2000_follow_ups(tmp_path: Path, sqlite_url: str) -> None:
    with running_stack(tmp_path, sqlite_url) as (procs, cht):
        async with httpx.AsyncClient(base_url=procs.url(), auth=CLIENT_AUTH, timeout=60) as client:
            await register(client, "http://127.0.0.1:9/unused")
            patients = await add_patients(client, FOLLOW_UPS)

            cht.down = True
            ack = await submit_all([procs.url()], patients[: FOLLOW_UPS // 2])
            eventually(lambda: cht.refused >= 20, "the worker to meet the outage")
            outage_records = sum(cht.records_by_service_request().values())
            cht.down = False
            ack = await submit_all([procs.url()], patients[FOLLOW_UPS // 2 :], ack=ack)

            def all_recorded() -> Counter[str] | None:
                counts = cht.records_by_service_request()
                return counts if len(counts) == FOLLOW_UPS else None

            counts = eventually(all_recorded, "a CHT record for every follow-up", timeout=180, every=0.5)
            await asyncio.sleep(1.5)  # a straggler resend would land now
            counts = cht.records_by_service_request()
            tasks = await all_of(client, "Task")

    assert outage_records == 0
    assert len(ack.by_patient) == FOLLOW_UPS
    assert set(counts) == set(ack.by_patient.values())
    assert max(counts.values()) == 1, [sr for sr, n in counts.items() if n > 1][:5]
    based_on = Counter(str(t["basedOn"][0]["reference"]).rsplit("/", 1)[1] for t in tasks)  # type: ignore[index]
    assert set(based_on) == set(ack.by_patient.values())
    assert max(based_on.values()) == 1


async def test_receiver_flaky_then_gone_then_back(tmp_path: Path, sqlite_url: str) -> None:
    receiver = FlakyReceiver(fail_every_other=True)
    port = free_port()
    patients_count = 120
    with running_stack(tmp_path, sqlite_url) as (procs, cht):
        async with httpx.AsyncClient(base_url=procs.url(), auth=CLIENT_AUTH, timeout=60) as client:
            await register(client, f"http://127.0.0.1:{port}/fhir")
            patients = await add_patients(client, patients_count)
            await submit_all([procs.url()], patients)
            eventually(
                lambda: len(cht.records_by_service_request()) == patients_count, "the CHT records", timeout=60
            )

            async def answer(batch: list[str]) -> None:
                for patient in batch:
                    res = await client.post("/mediator/encounter", json=encounter_body(patient))
                    assert res.status_code in (200, 201), res.text

            first, second = patients[: patients_count // 2], patients[patients_count // 2 :]
            with receiver.listening(port):
                await answer(first)  # every other delivery answered 500
                eventually(lambda: len(receiver.delivered) >= len(first) // 2, "some deliveries")
            await answer(second)  # the receiver is gone: connection refused
            await asyncio.sleep(3)
            receiver.fail_every_other = False
            with receiver.listening(port):
                eventually(
                    lambda: len(receiver.delivered) == patients_count, "every notification", timeout=120
                )
                await asyncio.sleep(2)  # a duplicate would arrive now

    assert len(receiver.delivered) == patients_count  # one notification id per Encounter
    assert set(receiver.delivered.values()) == {1}, "a notification delivered twice"
    assert max(receiver.attempts.values()) <= 20, "retries must stay bounded"
    assert sum(receiver.attempts.values()) > patients_count  # failures were really retried
