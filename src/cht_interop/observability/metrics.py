"""``/metrics`` for Prometheus: requests and latency per route, the outbox, deliveries, follow-ups.

Per process, on a registry of its own (never the library's global one). Requests are counted by
the route *template* (``/fhir/{resource_type}/{resource_id}``), never the raw path, so the series
stay few. The database figures (outbox depth and oldest age, follow-ups by Task status) are read
at scrape time by count queries; deliveries by outcome and the journal's counters are this
process's own (the process running the outbox worker counts the deliveries). The endpoint wants
an authenticated client (HTTP Basic, any client): Prometheus' ``basic_auth`` scrape setting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cht_interop.delivery.outbox.admin import count_by_status, oldest_pending_created_at
from cht_interop.gateway.auth import require_client

if TYPE_CHECKING:
    from cht_interop.services import Services

log = logging.getLogger(__name__)
router = APIRouter(tags=["observability"])
FOLLOW_UP_SYSTEM = "urn:cht-interop:follow-up"  # the follow-up Tasks' identifier (ltfu/resources.py)
TASK_STATUSES = ("requested", "accepted", "in-progress", "completed", "failed", "cancelled", "rejected")
SCRAPE_QUERY_SECONDS = 5.0


class AppMetrics:
    """One app's registry: the request metrics, and the figures gathered at each scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cht_interop_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cht_interop_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.scraped = _Scraped()
        self.registry.register(self.scraped)


class _Scraped(Collector):
    """Families computed by the last scrape (``collect`` is synchronous; the queries are not)."""

    def __init__(self) -> None:
        self.families: list[Any] = []

    def collect(self) -> Iterator[Any]:
        yield from self.families


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, *, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        clock = time.perf_counter()

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            route = route_template(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - clock)


def route_template(scope: Scope) -> str:
    """The matched route's template with its router's prefix (``/fhir/{rtype}/{rid}``).

    The route in the scope is the included router's own (``/{rtype}/{rid}``); its prefix is the
    part of the path before what the route's pattern matches. "unmatched" when no route matched."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    pattern = getattr(route, "path_regex", None)
    if not isinstance(template, str):
        return "unmatched"
    path: str = scope.get("path", "")
    if pattern is None or pattern.fullmatch(path):
        return template
    for cut in range(1, len(path)):
        if path[cut] == "/" and pattern.fullmatch(path[cut:]):
            return path[:cut] + template
    return template


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, _client: str = Depends(require_client)) -> Response:
    """The Prometheus text exposition, the database figures read now."""
    services: Services = request.app.state.services
    app_metrics: AppMetrics = request.app.state.metrics
    app_metrics.scraped.families = await _gather(services)
    return Response(generate_latest(app_metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _gather(services: Services) -> list[Any]:
    families: list[Any] = []
    try:
        async with services.db.connect() as conn:
            counts = await count_by_status(conn)
            oldest = await oldest_pending_created_at(conn)
    except Exception:  # a scrape reports what it can
        log.warning("metrics: the outbox could not be read", exc_info=True)
    else:
        jobs = GaugeMetricFamily("cht_interop_outbox_jobs", "Outbox jobs by status.", labels=["status"])
        for status, n in sorted(counts.items()):
            jobs.add_metric([status], n)
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        families += [
            jobs,
            GaugeMetricFamily(
                "cht_interop_outbox_oldest_pending_age_seconds",
                "Age of the oldest job waiting for delivery (pending or running); 0 when none waits.",
                value=max(age, 0.0),
            ),
        ]
    families += await _follow_ups(services)
    handlers = services.handlers
    attempts = CounterMetricFamily(
        "cht_interop_outbox_attempts",
        "Outbox job attempts run by this process, by job kind and outcome (done, failed, dead).",
        labels=["kind", "outcome"],
    )
    for (kind, outcome), n in sorted(getattr(handlers, "attempts", {}).items()):
        attempts.add_metric([kind, outcome], n)
    families.append(attempts)
    journal = services.journal
    if journal is not None:
        families += [
            CounterMetricFamily(
                "cht_interop_journal_rows_written", "Transaction log rows written.", value=journal.written
            ),
            CounterMetricFamily(
                "cht_interop_journal_rows_dropped",
                "Transaction log rows lost: queue full (a slow database) or a failed write.",
                value=journal.dropped,
            ),
            GaugeMetricFamily(
                "cht_interop_journal_queue_depth",
                "Transaction log rows waiting to be written.",
                value=journal.depth,
            ),
        ]
    return families


async def _follow_ups(services: Services) -> list[Any]:
    """Follow-ups (their Tasks) by status: one count search per status, all at once."""

    async def count(status: str) -> int:
        params = [("identifier", f"{FOLLOW_UP_SYSTEM}|"), ("status", status), ("_summary", "count")]
        bundle = await services.fhir.search("Task", params)
        return int(bundle.get("total") or 0)

    try:
        totals = await asyncio.wait_for(
            asyncio.gather(*(count(s) for s in TASK_STATUSES)), timeout=SCRAPE_QUERY_SECONDS
        )
    except Exception:
        log.warning("metrics: follow-ups could not be counted", exc_info=True)
        return []
    family = GaugeMetricFamily("cht_interop_follow_ups", "Follow-ups by Task status.", labels=["status"])
    for status, n in zip(TASK_STATUSES, totals, strict=True):
        family.add_metric([status], n)
    return [family]
