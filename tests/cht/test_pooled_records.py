"""The CHT records over the process's pooled aiohttp session (``ChtClient(pooled=...)``, as the
worker builds it): the same records, errors and pacing as over httpx, and httpx is not used for them.

Against the CHT double on a real loopback socket, behind a gate that can refuse with 429 or lose
an answer (``tests/support/cht_gate.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from cht_interop.cht.client import ChtClient, ChtPermanentError, ChtTransientError, RecordWrite
from cht_interop.kit.pooled_http import PooledHttp
from tests.cht.conftest import FORM, record, write_all
from tests.support.cht_gate import Gate
from tests.support.live import free_port


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


@pytest.fixture
def client(
    gate: tuple[Gate, str], pooled: PooledHttp, httpx_unused: tuple[list[httpx.Request], httpx.AsyncClient]
) -> ChtClient:
    """A client of the gated CHT double, as the worker builds it: the pooled session for records."""
    _g, url = gate
    _seen, http = httpx_unused
    return ChtClient(url, "admin", "pass-admin-1", http, pooled=pooled)


async def test_records_go_over_the_pooled_session_once_each_and_resends_find_them(
    gate, httpx_unused, client
) -> None:
    g, _url = gate
    seen, _http = httpx_unused
    docs = [record(n) for n in range(20)]

    first = await write_all(client, docs)
    again = await write_all(client, docs)  # a resend: conflicts, read back with _all_docs

    assert first == [RecordWrite(d["_id"], created=True) for d in docs]
    assert again == [RecordWrite(d["_id"], created=False) for d in docs]
    assert sorted(r["_id"] for r in g.double.records_of_form(FORM)) == sorted(d["_id"] for d in docs)
    assert seen == []


async def test_a_refusal_over_the_pooled_session_pauses_every_record_for_its_retry_after(
    gate, client
) -> None:
    g, _url = gate
    docs = [record(n) for n in range(12)]
    g.refuse = 1

    refused = await write_all(client, docs)

    assert all(isinstance(r, ChtTransientError) and r.status == 429 and r.retry_after == 1 for r in refused)
    assert client.pacer.refusals == 1
    assert client.pacer.paused_for() > 0.5
    assert await write_all(client, docs) == [RecordWrite(d["_id"], created=True) for d in docs]


async def test_a_known_permanent_500_over_the_pooled_session_is_permanent(gate, client) -> None:
    g, _url = gate
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
