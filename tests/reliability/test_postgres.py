"""Production's shape on PostgreSQL: two ``serve`` and two ``worker`` processes on one database under
load, and the database restarted under load.

Checked as an operator would: no follow-up has two CHT records and no notification reached the
requesting system twice; after a database restart the service answers again by itself, nothing it
acknowledged is missing, and its log says what happened.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLIENT_AUTH, truncate_pg
from tests.ltfu.conftest import encounter_body
from tests.reliability.stack import (
    FlakyReceiver,
    add_patients,
    eventually,
    register,
    running_stack,
    submit_all,
)
from tests.reliability.test_peer_outages import all_of
from tests.support.live import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


async def test_two_serve_two_worker_processes(tmp_path: Path, pg_url: str) -> None:
    truncate_pg(pg_url)
    receiver = FlakyReceiver()
    port = free_port()
    count = 300
    with receiver.listening(port), running_stack(tmp_path, pg_url, serves=2, workers=2) as (procs, cht):
        urls = [procs.url(0), procs.url(1)]
        async with httpx.AsyncClient(base_url=urls[0], auth=CLIENT_AUTH, timeout=60) as client:
            await register(client, f"http://127.0.0.1:{port}/fhir")
            patients = await add_patients(client, count)
        ack = await submit_all(urls, patients + patients[: count // 3])  # some sent twice, to both
        eventually(lambda: len(cht.records_by_service_request()) == count, "the CHT records", timeout=90)

        async def answer(url: str, batch: list[str]) -> None:
            async with httpx.AsyncClient(base_url=url, auth=CLIENT_AUTH, timeout=60) as client:
                for patient in batch:
                    res = await client.post("/mediator/encounter", json=encounter_body(patient))
                    assert res.status_code in (200, 201), res.text

        await asyncio.gather(*(answer(urls[n % 2], patients[n::4]) for n in range(4)))
        eventually(lambda: len(receiver.delivered) == count, "every notification", timeout=90)
        await asyncio.sleep(4)  # past a lease: a duplicate would arrive now

    assert len(ack.by_patient) == count
    records = cht.records_by_service_request()
    assert set(records) == set(ack.by_patient.values())
    assert set(records.values()) == {1}, "a follow-up with two CHT records"
    assert set(receiver.delivered.values()) == {1}, "a notification delivered twice"


def restart_postgres() -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True, timeout=60
    )


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def test_postgres_restarted_under_load(tmp_path: Path, pg_url: str) -> None:
    truncate_pg(pg_url)
    count = 600
    with running_stack(tmp_path, pg_url, serves=2, workers=1) as (procs, cht):
        urls = [procs.url(0), procs.url(1)]
        async with httpx.AsyncClient(base_url=urls[0], auth=CLIENT_AUTH, timeout=60) as client:
            await register(client, "http://127.0.0.1:9/unused")
            patients = await add_patients(client, count)
        load = asyncio.create_task(submit_all(urls, patients, concurrency=8))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(restart_postgres)
        ack = await asyncio.wait_for(load, timeout=180)
        for url in urls:
            eventually(lambda url=url: ready(url), f"{url} ready again", timeout=60)  # type: ignore[misc]
        eventually(lambda: len(cht.records_by_service_request()) == count, "the CHT records", timeout=120)
        async with httpx.AsyncClient(base_url=urls[1], auth=CLIENT_AUTH, timeout=60) as client:
            stored = {str(r["id"]) for r in await all_of(client, "ServiceRequest")}
        logs = procs.logs(tail=None)

    assert ack.errors, "the restart was not felt: the test proved nothing"
    assert set(ack.by_patient.values()) <= stored, "an acknowledged follow-up was lost"
    assert len(stored) == count
    assert set(cht.records_by_service_request().values()) == {1}
    # the log names what happened: psycopg's lost-connection error, from whichever process met it
    assert "OperationalError" in logs, logs[-3000:]
