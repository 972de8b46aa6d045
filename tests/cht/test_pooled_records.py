"""The CHT records over the process's pooled aiohttp session (``ChtClient(pooled=...)``, as the
worker builds it): the same records, errors and pacing as over httpx, and httpx is not used for them.

Against the CHT double on a real loopback socket, behind a gate that can refuse with 429 or lose
an answer (``tests/support/cht_gate.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from cht_interop.cht.client import ChtClient, ChtPermanentError, ChtTransientError, RecordWrite
from cht_interop.cht.records import follow_up_record_id, record_doc
from cht_interop.kit.pooled_http import PooledHttp
from tests.support.cht_gate import Gate
from tests.support.live import free_port, serve_in_thread

FORM = "INTEROP_FOLLOW_UP"


@pytest.fixture
def gate() -> Iterator[tuple[Gate, str]]:
    g = Gate()
    with serve_in_thread(g.app()) as url:
        yield g, url


@pytest.fixture
async def pooled() -> AsyncIterator[PooledHttp]:
    session = PooledHttp(timeout_seconds=5)
    yield session
    await session.aclose()


@pytest.fixture
async def httpx_unused() -> AsyncIterator[tuple[list[httpx.Request], httpx.AsyncClient]]:
    """An httpx client that fails every call it is given (and notes it): the records must not use it."""
    seen: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ConnectError("the records went over httpx", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        yield seen, client


def record(n: int) -> dict[str, Any]:
    body = {
        "_meta": {"form": "interop_follow_up"},
        "patient_uuid": f"patient-{n}",
        "service_request_id": f"sr-{n}",
    }
    return record_doc(follow_up_record_id(f"fu-{n}"), body, reported_date_ms=1764072000000)


async def write_all(client: ChtClient, docs: list[dict[str, Any]]) -> list[RecordWrite | BaseException]:
    return list(await asyncio.gather(*(client.write_record(d) for d in docs), return_exceptions=True))


async def test_records_go_over_the_pooled_session_once_each_and_resends_find_them(
    gate, pooled, httpx_unused
) -> None:
    g, url = gate
    seen, http = httpx_unused
    client = ChtClient(url, "admin", "pass-admin-1", http, pooled=pooled)
    docs = [record(n) for n in range(20)]

    first = await write_all(client, docs)
    again = await write_all(client, docs)  # a resend: conflicts, read back with _all_docs

    assert first == [RecordWrite(d["_id"], created=True) for d in docs]
    assert again == [RecordWrite(d["_id"], created=False) for d in docs]
    assert sorted(r["_id"] for r in g.double.records_of_form(FORM)) == sorted(d["_id"] for d in docs)
    assert seen == []


async def test_a_refusal_over_the_pooled_session_pauses_every_record_for_its_retry_after(
    gate, pooled, httpx_unused
) -> None:
    g, url = gate
    _seen, http = httpx_unused
    client = ChtClient(url, "admin", "pass-admin-1", http, pooled=pooled)
    docs = [record(n) for n in range(12)]
    g.refuse = 1

    refused = await write_all(client, docs)

    assert all(isinstance(r, ChtTransientError) and r.status == 429 and r.retry_after == 1 for r in refused)
    assert client.pacer.refusals == 1
    assert client.pacer.paused_for() > 0.5
    assert await write_all(client, docs) == [RecordWrite(d["_id"], created=True) for d in docs]


async def test_a_known_permanent_500_over_the_pooled_session_is_permanent(gate, pooled, httpx_unused) -> None:
    g, url = gate
    _seen, http = httpx_unused
    client = ChtClient(url, "admin", "pass-admin-1", http, pooled=pooled)
    g.double.fail_next(1, 500, {"code": 500, "error": "Server error", "details": "Form not found: X"})

    (result,) = await write_all(client, [record(1)])

    assert isinstance(result, ChtPermanentError) and result.status == 500
    assert "Form not found" in result.message


async def test_an_unreachable_cht_over_the_pooled_session_is_transient(pooled, httpx_unused) -> None:
    _seen, http = httpx_unused
    client = ChtClient(f"http://127.0.0.1:{free_port()}", "admin", "pass-admin-1", http, pooled=pooled)

    (result,) = await write_all(client, [record(1)])

    assert isinstance(result, ChtTransientError) and result.status is None
    assert result.message.startswith("CHT unreachable: ConnectError")
    assert "pass-admin-1" not in result.message
