"""The rest-hook handler against a real HTTP receiver on loopback (HAPI's RestHook subscriber).

The FHIR side is a small in-memory double (the handler only reads Subscriptions and resource
versions and updates a Subscription); everything on the wire is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cht_interop.db import Database
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import DeliveryReceipt, PermanentDeliveryError, TransientDeliveryError
from cht_interop.delivery.registry import HandlerRegistry, Job
from cht_interop.delivery.worker import OutboxWorker
from cht_interop.fhir.client import WriteResult
from cht_interop.fhir.errors import ResourceGone, ResourceNotFound, VersionConflict
from cht_interop.fhir.subscriptions.delivery import (
    KIND,
    SubscriptionNotifier,
    notification_job,
    parse_channel_headers,
)
from cht_interop.kit.pooled_http import PooledHttp
from tests.conftest import make_settings
from tests.support.live import free_port, serve_in_thread

SECRET = "Bearer s3cr3t-t0ken-value"


# --- a real receiver ------------------------------------------------------------------------


@dataclass
class Hit:
    method: str
    path: str
    query: str
    raw_headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.raw_headers if k == name.lower()]


@dataclass
class Receiver:
    """Answers from a script of (status, content type, body); the last entry repeats."""

    script: list[tuple[int, str | None, bytes]] = field(default_factory=lambda: [(200, None, b"")])
    delay: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.hits.append(
                Hit(
                    request.method,
                    request.url.path,
                    request.url.query,
                    [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.scope["headers"]],
                    body,
                )
            )
            status, ctype, content = self.script[min(len(self.hits) - 1, len(self.script) - 1)]
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {"content-type": ctype} if ctype else {}
        return Response(content=content, status_code=status, headers=headers)

    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/{path:path}", self.handle, methods=["GET", "POST", "PUT", "DELETE"])]
        )


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_in_thread(r.app()) as base:
        yield r, base


# --- a FHIR double: versions kept, read/vread/update ----------------------------------------


class FakeFhir:
    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], list[dict[str, Any] | None]] = {}

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        key = (resource["resourceType"], resource["id"])
        history = self.versions.setdefault(key, [])
        stored = copy.deepcopy(resource)
        stored["meta"] = {"versionId": str(len(history) + 1), "lastUpdated": "2026-11-25T12:00:00.000+00:00"}
        history.append(stored)
        return copy.deepcopy(stored)

    def remove(self, rtype: str, rid: str) -> None:
        self.versions[(rtype, rid)].append(None)

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        history = self.versions.get((resource_type, resource_id))
        if not history:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        if history[-1] is None:
            raise ResourceGone(f"{resource_type}/{resource_id} was deleted")
        return copy.deepcopy(history[-1])

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]:
        history = self.versions.get((resource_type, resource_id)) or []
        n = int(version_id)
        if not 1 <= n <= len(history) or history[n - 1] is None:
            raise ResourceNotFound("no such version")
        return copy.deepcopy(history[n - 1])  # type: ignore[arg-type]

    async def update(self, resource: dict[str, Any], *, if_match: str | None = None) -> WriteResult:
        current = await self.read(resource["resourceType"], resource["id"])
        if if_match is not None and current["meta"]["versionId"] != if_match:
            raise VersionConflict("stale")
        return WriteResult(self.put(resource), created=False)


def subscription(
    endpoint: str, *, payload: str | None = "application/fhir+json", **extra: Any
) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "header": ["Content-Type: application/fhir+json", f"Authorization: {SECRET}", "no-colon-line"],
    }
    if payload is not None:
        channel["payload"] = payload
    return {
        "resourceType": "Subscription",
        "id": "sub-1",
        "status": "active",
        "reason": "LTFU follow-up",
        "criteria": "Encounter?identifier=abc",
        "channel": channel,
        **extra,
    }


ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "42",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "FLD"},
    "identifier": [{"system": "cht", "value": "abc"}],
}


def job_for(sub: dict[str, Any], resource: dict[str, Any], *, job_id: int = 7, owed: bool = False) -> Job:
    new = notification_job(sub, resource, owed=owed)
    return Job(
        id=job_id,
        kind=new.kind,
        target=new.target,
        payload=new.payload,
        ordering_key=new.ordering_key,
        attempts=0,
        created_at=datetime.now(UTC),
        notification_id="0b5f6a0e-1111-4222-8333-944445555666",
    )


@pytest.fixture
async def notifier(tmp_path: Path, sqlite_url: str) -> Any:
    fhir = FakeFhir()
    http = PooledHttp(timeout_seconds=2)
    try:
        settings = make_settings(tmp_path, sqlite_url, ALLOW_PRIVATE_CALLBACKS=True, HTTP_TIMEOUT_SECONDS=2)
        yield fhir, SubscriptionNotifier(fhir, http, settings)  # type: ignore[arg-type]
    finally:
        await http.aclose()


# --- the wire format ------------------------------------------------------------------------


async def test_payload_subscription_gets_a_put_of_the_resource_exactly_like_hapi(
    receiver: tuple[Receiver, str], notifier: Any
) -> None:
    r, base = receiver
    fhir, n = notifier
    sub = fhir.put(subscription(f"{base}/callback/"))  # trailing slash: no "//" in the URL
    enc = fhir.put(ENCOUNTER)
    job = job_for(sub, enc)

    receipt = await n.deliver(job)

    assert receipt == DeliveryReceipt(http_status=200, note=None)
    [hit] = r.hits
    assert (hit.method, hit.path) == ("PUT", "/callback/Encounter/42")
    assert json.loads(hit.body) == enc
    assert hit.header("content-type") == ["application/fhir+json; charset=UTF-8", "application/fhir+json"]
    assert hit.header("accept") == ["application/fhir+json;q=1.0, application/json+fhir;q=0.9"]
    assert hit.header("if-match") == ['"1"']
    assert hit.header("authorization") == [SECRET]
    assert hit.header("x-notification-id") == [job.notification_id]
    assert hit.header("accept-charset") == ["utf-8"]


async def test_subscription_without_payload_gets_an_empty_post_to_the_endpoint(
    receiver: tuple[Receiver, str], notifier: Any
) -> None:
    r, base = receiver
    fhir, n = notifier
    sub = fhir.put(subscription(f"{base}/hook", payload=None))
    enc = fhir.put(ENCOUNTER)
    await n.deliver(job_for(sub, enc))
    [hit] = r.hits
    assert (hit.method, hit.path, hit.body) == ("POST", "/hook", b"")
    assert hit.header("if-match") == []
    assert hit.header("authorization") == [SECRET]
    assert hit.header("x-notification-id") == ["0b5f6a0e-1111-4222-8333-944445555666"]


async def test_the_version_that_triggered_is_sent_not_the_latest(
    receiver: tuple[Receiver, str], notifier: Any
) -> None:
    r, base = receiver
    fhir, n = notifier
    sub = fhir.put(subscription(f"{base}/cb"))
    v1 = fhir.put(ENCOUNTER)
    fhir.put({**ENCOUNTER, "status": "cancelled"})
    await n.deliver(job_for(sub, v1))
    [hit] = r.hits
    assert json.loads(hit.body)["status"] == "finished"
    assert hit.header("if-match") == ['"1"']


@pytest.mark.parametrize(
    ("status", "ctype", "body", "delivered"),
    [
        (200, None, b"", True),
        (204, None, b"", True),
        (201, "application/fhir+json", b'{"resourceType":"OperationOutcome","issue":[]}', True),
        (200, "application/fhir+json", json.dumps(ENCOUNTER).encode(), True),
        (200, "text/plain", b"thanks", True),
        (200, "application/json", b'{"ok":true}', False),  # HAPI-1838: not a resource -> retried
        (200, "application/json; charset=utf-8", b"not json at all", False),
        (200, "application/fhir+xml", b'<Bundle xmlns="http://hl7.org/fhir"/>', True),
        (200, "application/xml", b"<ok/>", False),
        (500, None, b"", False),
        (404, "text/plain", b"nope", False),
        (302, None, b"", False),
    ],
)
async def test_what_counts_as_delivered(
    receiver: tuple[Receiver, str],
    notifier: Any,
    status: int,
    ctype: str | None,
    body: bytes,
    delivered: bool,
) -> None:
    r, base = receiver
    r.script = [(status, ctype, body)]
    fhir, n = notifier
    job = job_for(fhir.put(subscription(f"{base}/cb")), fhir.put(ENCOUNTER))
    if delivered:
        assert (await n.deliver(job)).http_status == status
    else:
        with pytest.raises(TransientDeliveryError) as caught:
            await n.deliver(job)
        assert caught.value.http_status == status
        assert str(caught.value).startswith(f"HTTP {status}")


async def test_unreachable_receiver_is_transient(notifier: Any) -> None:
    fhir, n = notifier
    job = job_for(fhir.put(subscription(f"http://127.0.0.1:{free_port()}/cb")), fhir.put(ENCOUNTER))
    with pytest.raises(TransientDeliveryError, match="ConnectError"):
        await n.deliver(job)


async def test_slow_receiver_times_out_as_transient(receiver: tuple[Receiver, str], notifier: Any) -> None:
    r, base = receiver
    r.delay = 4  # the notifier's timeout is 2 s in this test (10 s by default)
    fhir, n = notifier
    job = job_for(fhir.put(subscription(f"{base}/cb")), fhir.put(ENCOUNTER))
    with pytest.raises(TransientDeliveryError, match="Timeout"):
        await n.deliver(job)


async def test_credentials_never_reach_errors_or_job_payloads(
    receiver: tuple[Receiver, str], notifier: Any
) -> None:
    r, base = receiver
    r.script = [(401, "text/plain", f"bad token {SECRET}".encode())]
    fhir, n = notifier
    host = base.removeprefix("http://")
    sub = fhir.put(subscription(f"http://user:hunter2pass@{host}/cb?token=abc123"))
    job = job_for(sub, fhir.put(ENCOUNTER))
    assert job.payload == {
        "subscription_id": "sub-1",
        "resource_type": "Encounter",
        "resource_id": "42",
        "version_id": "1",
    }
    assert "hunter2pass" not in job.target and job.target == f"http://{host}/cb"
    with pytest.raises(TransientDeliveryError) as caught:
        await n.deliver(job)
    assert "s3cr3t" not in str(caught.value) and str(caught.value).startswith("HTTP 401")
    assert r.hits[0].header("authorization") == [SECRET]  # the channel header wins over URL userinfo
    assert (r.hits[0].path, r.hits[0].query) == ("/cb/Encounter/42", "token=abc123")


async def test_userinfo_in_the_endpoint_becomes_basic_auth(
    receiver: tuple[Receiver, str], notifier: Any
) -> None:
    r, base = receiver
    r.script = [(503, None, b"")]
    fhir, n = notifier
    host = base.removeprefix("http://")
    sub = subscription(f"http://user:hunter2pass@{host}/cb")
    sub["channel"]["header"] = []
    job = job_for(fhir.put(sub), fhir.put(ENCOUNTER))
    with pytest.raises(TransientDeliveryError) as caught:
        await n.deliver(job)
    assert r.hits[0].header("authorization") == ["Basic dXNlcjpodW50ZXIycGFzcw=="]  # user:hunter2pass
    assert "hunter2" not in str(caught.value) and "dXNlcj" not in str(caught.value)


async def test_deleted_subscription_is_permanent_and_off_is_skipped(
    receiver: tuple[Receiver, str], notifier: Any
) -> None:
    r, base = receiver
    fhir, n = notifier
    sub = fhir.put(subscription(f"{base}/cb"))
    enc = fhir.put(ENCOUNTER)
    fhir.put({**sub, "status": "off"})
    receipt = await n.deliver(job_for(sub, enc))
    assert receipt.note == "not delivered: Subscription/sub-1 is off"
    fhir.remove("Subscription", "sub-1")
    with pytest.raises(PermanentDeliveryError, match="no longer exists"):
        await n.deliver(job_for(sub, enc))
    assert r.hits == []


async def test_a_notification_owed_by_the_switch_off_s_own_write_is_delivered_although_off(
    receiver: tuple[Receiver, str], notifier: Any
) -> None:
    """The Encounter and its follow-up's switch-off are one write: the job is not older than the
    off version, yet the Encounter happened while the Subscription was active."""
    r, base = receiver
    fhir, n = notifier
    sub = fhir.put(subscription(f"{base}/cb"))
    enc = fhir.put(ENCOUNTER)
    fhir.put({**sub, "status": "off"})
    receipt = await n.deliver(job_for(sub, enc, owed=True))
    assert receipt.http_status == 200
    assert [h.path for h in r.hits] == ["/cb/Encounter/42"]


async def test_private_callback_refused_unless_allowed(tmp_path: Path, sqlite_url: str) -> None:
    fhir = FakeFhir()
    async with contextlib.aclosing(PooledHttp(timeout_seconds=2)) as http:
        n = SubscriptionNotifier(fhir, http, make_settings(tmp_path, sqlite_url))  # type: ignore[arg-type]
        for endpoint in ("http://127.0.0.1:9/cb", "http://10.1.2.3/cb", "http://localhost:9/cb"):
            sub = fhir.put(subscription(endpoint))
            with pytest.raises(PermanentDeliveryError, match="private or loopback"):
                await n.deliver(job_for(sub, fhir.put(ENCOUNTER)))


def test_channel_headers_split_at_the_first_colon() -> None:
    assert parse_channel_headers(
        [
            "Authorization: Bearer a:b:c",
            "  X-Api-Key :  k1  ",
            "broken",
            "Bad Name: x",
            "X-Evil: a\r\nHost: b",
            3,
        ]
    ) == [("Authorization", "Bearer a:b:c"), ("X-Api-Key", "k1")]


# --- dead letter ----------------------------------------------------------------------------


async def test_on_dead_sets_the_subscription_to_error_with_the_reason(notifier: Any) -> None:
    fhir, n = notifier
    sub = fhir.put(subscription("https://example.org/cb"))
    job = job_for(sub, fhir.put(ENCOUNTER))
    await n.on_dead(job, "gave up after 20 attempt(s); last error: HTTP 500")
    stored = await fhir.read("Subscription", "sub-1")
    assert stored["status"] == "error"
    assert "HTTP 500" in stored["error"] and job.notification_id in stored["error"]
    assert stored["reason"] == "LTFU follow-up"  # the client's reason is left alone
    assert stored["meta"]["versionId"] == "2"


async def test_on_dead_run_twice_writes_the_subscription_once(notifier: Any) -> None:
    """The outbox re-runs a hook whose run it could not record: the second run changes nothing."""
    fhir, n = notifier
    sub = fhir.put(subscription("https://example.org/cb"))
    job = job_for(sub, fhir.put(ENCOUNTER))
    await n.on_dead(job, "HTTP 410 from the callback")
    first = await fhir.read("Subscription", "sub-1")
    await n.on_dead(job, "HTTP 410 from the callback")
    again = await fhir.read("Subscription", "sub-1")
    assert again == first
    assert (again["status"], again["meta"]["versionId"]) == ("error", "2")


async def test_on_dead_leaves_an_off_or_deleted_subscription_alone(notifier: Any) -> None:
    fhir, n = notifier
    sub = fhir.put(subscription("https://example.org/cb", status="off"))
    job = job_for(sub, fhir.put(ENCOUNTER))
    await n.on_dead(job, "whatever")
    assert (await fhir.read("Subscription", "sub-1"))["status"] == "off"
    fhir.remove("Subscription", "sub-1")
    await n.on_dead(job, "whatever")  # no error raised


# --- through the outbox and the worker ------------------------------------------------------


async def test_retried_after_a_failure_then_never_sent_again(
    receiver: tuple[Receiver, str], tmp_path: Path, database_url: str
) -> None:
    """500 first, then accepted: two requests with one notification id; nothing after acceptance."""
    r, base = receiver
    r.script = [(500, None, b""), (200, None, b"")]
    fhir = FakeFhir()
    sub = fhir.put(subscription(f"{base}/cb"))
    enc = fhir.put(ENCOUNTER)
    settings = make_settings(
        tmp_path, database_url, ALLOW_PRIVATE_CALLBACKS=True, DELIVERY_INITIAL_BACKOFF_SECONDS=0.01
    )
    db = Database(database_url)
    try:
        async with contextlib.aclosing(PooledHttp(timeout_seconds=10)) as http:
            registry = HandlerRegistry()
            n = SubscriptionNotifier(fhir, http, settings)  # type: ignore[arg-type]
            registry.register(KIND, n.deliver, on_dead=n.on_dead)
            async with db.transaction() as conn:
                [job_id] = await outbox.enqueue(conn, [notification_job(sub, enc)])
            worker = OutboxWorker(db, registry, settings)
            statuses: list[str] = []
            async with asyncio.timeout(20):
                while "done" not in statuses:
                    statuses += [o.status for o in await worker.run_once()]
                    await asyncio.sleep(0.02)
            assert await worker.drain() == []
        async with db.transaction() as conn:
            record = await outbox.get_job(conn, job_id)
    finally:
        await db.dispose()
    assert statuses == ["retry", "done"]
    assert [h.method for h in r.hits] == ["PUT", "PUT"]
    ids = {h.header("x-notification-id")[0] for h in r.hits}
    assert ids == {record.notification_id} if record else False
    assert record is not None and [(a.outcome, a.http_status) for a in record.attempt_log] == [
        ("retry", 500),
        ("success", 200),
    ]
    assert all("s3cr3t" not in (a.error or "") for a in record.attempt_log)
