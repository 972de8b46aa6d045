"""/metrics: Prometheus' text format, per route template, the outbox and the follow-ups."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cht_interop.services import Services
from tests.ltfu.conftest import push_patient, register_requester, service_request_body
from tests.support.cht_double import ChtDouble


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    res = await client.get("/metrics")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(res.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_need_a_client(client: httpx.AsyncClient) -> None:
    res = await client.get("/metrics", auth=None)
    assert res.status_code == 401
    assert res.json()["resourceType"] == "OperationOutcome"
    assert (await client.get("/metrics", auth=("interop-client", "nope"))).status_code == 401


async def test_requests_by_route_template(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    for rid in ("a", "b", "c"):
        assert (await client.get(f"/fhir/Patient/{rid}")).status_code == 404
    after = await scrape(client)

    read = {"method": "GET", "route": "/fhir/{rtype}/{rid}", "status": "404"}
    assert (
        value(after, "cht_interop_http_requests_total", **read)
        - value(before, "cht_interop_http_requests_total", **read)
        == 3
    )
    assert not [k for k in after if any(v.startswith("/fhir/Patient/") for _, v in k[1])]  # never raw paths
    timed = {"method": "GET", "route": "/fhir/{rtype}/{rid}"}
    assert value(after, "cht_interop_http_request_duration_seconds_count", **timed) >= 3
    assert value(after, "cht_interop_http_requests_total", method="GET", route="/metrics", status="200") >= 1


async def test_outbox_deliveries_and_follow_ups_move(
    client: httpx.AsyncClient, services: Services, cht: ChtDouble, drain: Any
) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    assert (
        await client.post("/mediator/service-request", json=service_request_body(patient))
    ).status_code == 201

    waiting = await scrape(client)
    assert value(waiting, "cht_interop_outbox_jobs", status="pending") >= 1
    assert value(waiting, "cht_interop_outbox_oldest_pending_age_seconds") > 0
    assert value(waiting, "cht_interop_follow_ups", status="requested") == 1
    assert value(waiting, "cht_interop_outbox_attempts_total", kind="cht.record", outcome="done") == 0

    await drain()
    assert services.journal is not None
    await services.journal.flush()  # rows are written in batches, within 250 ms
    done = await scrape(client)
    assert value(done, "cht_interop_outbox_attempts_total", kind="cht.record", outcome="done") == 1
    assert value(done, "cht_interop_follow_ups", status="requested") == 0
    assert value(done, "cht_interop_follow_ups", status="accepted") == 1
    assert value(done, "cht_interop_journal_rows_written_total") >= 4
    assert value(done, "cht_interop_journal_rows_dropped_total") == 0
