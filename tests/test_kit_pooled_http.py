"""The callbacks' lean HTTP client: TLS verified as the httpx client verifies it, every call
recorded for the transaction log as the httpx client's calls are."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cht_interop.kit import exchanges
from cht_interop.kit.pooled_http import CallFailed, PooledHttp
from tests.support.live import serve_in_thread
from tests.support.tls import loopback_certificate


async def _answer(request: Request) -> Response:
    await request.body()
    return Response(b'{"resourceType":"OperationOutcome"}', 201, media_type="application/fhir+json")


def _app() -> Starlette:
    return Starlette(routes=[Route("/{path:path}", _answer, methods=["PUT", "POST"])])


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert_file, key_file, ca_file = loopback_certificate(tmp_path)
    with serve_in_thread(_app(), tls=(str(cert_file), str(key_file))) as url:
        yield url, ca_file


async def test_an_unknown_certificate_is_refused_and_one_from_a_trusted_ca_accepted(
    tls_receiver: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca_file = tls_receiver
    async with contextlib.aclosing(PooledHttp(timeout_seconds=5)) as http:
        with pytest.raises(CallFailed, match="ConnectError"):
            await http.request("POST", f"{url}/cb", [], b"", max_body=1024)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # as httpx: the CAs a deployment trusts
    async with contextlib.aclosing(PooledHttp(timeout_seconds=5)) as http:
        reply = await http.request("POST", f"{url}/cb", [], b"", max_body=1024)
    assert reply.status == 201


async def test_a_call_is_recorded_for_the_transaction_log_with_its_headers_as_sent() -> None:
    with serve_in_thread(_app()) as url:
        recording = exchanges.start("tx-1")
        headers = [
            ("Content-Type", "application/fhir+json; charset=UTF-8"),
            ("Content-Type", "application/fhir+json"),  # a channel header repeats it, as HAPI sends
            ("X-Notification-Id", "n-1"),
        ]
        async with contextlib.aclosing(PooledHttp(timeout_seconds=5)) as http:
            reply = await http.request("PUT", f"{url}/fhir/Encounter/1", headers, b"{}", max_body=1024)
    assert (reply.status, reply.content_type) == (201, "application/fhir+json")
    assert reply.body == b'{"resourceType":"OperationOutcome"}'
    [call] = recording.exchanges
    assert (call.method, call.url.path, call.status, call.body) == ("PUT", "/fhir/Encounter/1", 201, b"{}")
    assert call.headers["content-type"] == "application/fhir+json; charset=UTF-8, application/fhir+json"
    assert call.headers["x-notification-id"] == "n-1"
    assert call.response_headers["content-type"] == "application/fhir+json"
    assert call.answered_at is not None and call.sent_at <= call.answered_at
