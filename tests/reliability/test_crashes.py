"""``kill -9`` of ``serve`` and of ``worker`` at random moments under load, ten rounds.

The load is a requesting system that retries a request whose connection broke (it cannot know
whether the server committed it), as an EMR must. Afterwards: every acknowledged follow-up is
stored, there is one follow-up (ServiceRequest, Task) per patient however often it was sent, and
the CHT holds exactly one record per follow-up — the worker may have died between the CHT's
answer and recording it.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLIENT_AUTH
from tests.reliability.stack import (
    Acknowledged,
    add_patients,
    eventually,
    register,
    running_stack,
    submit_all,
)
from tests.reliability.test_peer_outages import all_of

pytestmark = pytest.mark.e2e

ROUNDS = 10
PER_ROUND = 60


async def test_kill_9_serve_and_worker_ten_times(tmp_path: Path, sqlite_url: str) -> None:
    rng = random.Random()
    with running_stack(tmp_path, sqlite_url) as (procs, cht):
        async with httpx.AsyncClient(base_url=procs.url(), auth=CLIENT_AUTH, timeout=60) as client:
            await register(client, "http://127.0.0.1:9/unused")
            patients = await add_patients(client, ROUNDS * PER_ROUND)
        ack = Acknowledged()
        kills: Counter[str] = Counter()
        for n in range(ROUNDS):
            batch = patients[n * PER_ROUND : (n + 1) * PER_ROUND]
            load = asyncio.create_task(submit_all([procs.url()], batch, concurrency=8, ack=ack))
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            victim = rng.choice(["serve", "worker", "both"])
            if victim in ("worker", "both"):
                procs.kill(procs.working[0])
                kills["worker"] += 1
            if victim in ("serve", "both"):
                procs.kill(procs.serving[0])
                kills["serve"] += 1
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            if victim in ("serve", "both"):
                await asyncio.to_thread(procs.start_serve, 0)
            if victim in ("worker", "both"):
                procs.start_worker(0)
            await asyncio.wait_for(load, timeout=120)

        def all_recorded() -> Counter[str] | None:
            counts = cht.records_by_service_request()
            return counts if len(counts) == len(patients) else None

        # a job whose worker died is taken again once its lease (3 s here) runs out
        eventually(all_recorded, "a CHT record for every follow-up", timeout=120, every=0.5)
        await asyncio.sleep(4)  # one more lease: a second record would land now
        counts = cht.records_by_service_request()
        async with httpx.AsyncClient(base_url=procs.url(), auth=CLIENT_AUTH, timeout=60) as client:
            requests = await all_of(client, "ServiceRequest")
            tasks = await all_of(client, "Task")
            missing = [
                sr
                for sr in ack.by_patient.values()
                if (await client.get(f"/fhir/ServiceRequest/{sr}")).status_code != 200
            ]

    assert kills["serve"] and kills["worker"], kills
    assert len(ack.by_patient) == len(patients)
    assert missing == [], "acknowledged follow-ups lost"
    subjects = Counter(str(r["subject"]["reference"]) for r in requests)  # type: ignore[index]
    assert len(subjects) == len(patients) and max(subjects.values()) == 1, "a patient followed up twice"
    assert len(tasks) == len(patients)
    assert set(counts) == set(ack.by_patient.values())
    doubled = [sr for sr, n in counts.items() if n > 1]
    assert doubled == [], f"{len(doubled)} follow-ups with two CHT records\n{procs.logs()[-4000:]}"
