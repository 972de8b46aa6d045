"""/health/ready tells why: the database, the worker's last loop, the peers' last answers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx

from cht_interop.delivery.worker import OutboxWorker
from cht_interop.services import Services
from tests.ltfu.conftest import push_patient, register_requester, service_request_body
from tests.support.cht_double import ChtDouble


async def test_ready_shows_worker_peers_and_journal(
    client: httpx.AsyncClient, services: Services, cht: ChtDouble, drain: Any
) -> None:
    before = (await client.get("/health/ready", auth=None)).json()
    assert before["status"] == "ok" and before["peers"] == {}
    assert "worker" not in before  # this app runs no worker

    services.worker = OutboxWorker(services.db, services.handlers, services.settings)
    await register_requester(client)
    patient = await push_patient(client)
    await client.post("/mediator/service-request", json=service_request_body(patient))
    await drain()
    assert services.journal is not None
    await services.journal.flush()
    body = (await client.get("/health/ready", auth=None)).json()

    assert body["worker"] == {"last_loop": None, "seconds_ago": None}  # never looped: run() not started

    stop = asyncio.Event()
    running = asyncio.create_task(services.worker.run(stop))
    await asyncio.sleep(0.3)  # a few polls (DELIVERY_POLL_SECONDS is 0.05 in tests)
    looping = (await client.get("/health/ready", auth=None)).json()["worker"]
    stop.set()
    await running
    assert looping["seconds_ago"] < 0.2
    assert datetime.fromisoformat(looping["last_loop"]) <= datetime.now(UTC)
    cht_host = httpx.URL(services.settings.cht_url or "").host
    peer = body["peers"][cht_host]
    assert peer["last_status"] == 201 and peer["reachable"] is True  # the record PUT: 201 Created
    assert datetime.fromisoformat(peer["last_call"].replace("Z", "+00:00"))
    assert body["journal"]["dropped"] == 0 and body["journal"]["written"] >= 4
