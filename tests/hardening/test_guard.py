"""The request guard over a real server (uvicorn on loopback, real keep-alive connections): bodies
over the limit refused while they stream, and a crash that leaves the client's connection sane."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cht_interop.app import create_app
from tests.conftest import CLIENT_AUTH, make_settings
from tests.ltfu.conftest import patient_body
from tests.support.live import serve_in_thread

LIMIT = 64 * 1024
CHUNK = 16 * 1024
TOTAL = 256 * 1024 * 1024  # what the client would send if nobody stopped it


@pytest.fixture
def live(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[str, Any]]:
    """The whole app on a loopback port, MAX_BODY_BYTES small; yields its URL and the app."""
    app = create_app(make_settings(tmp_path, sqlite_url, MAX_BODY_BYTES=LIMIT), run_worker=False)
    with serve_in_thread(app) as url:
        yield url, app


class Upload:
    """A chunked body of TOTAL bytes of JSON-looking text; counts what the client got to send."""

    def __init__(self) -> None:
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"resourceType": "Patient", "text": "'
        while self.sent < TOTAL:
            self.sent += CHUNK
            yield b"x" * CHUNK


@pytest.mark.parametrize("path", ["/fhir/Patient", "/fhir", "/mediator/patient", "/mediator/service-request"])
def test_a_chunked_body_over_the_limit_is_refused_early(live: tuple[str, Any], path: str) -> None:
    url, _app = live
    upload = Upload()
    with httpx.Client(base_url=url, auth=CLIENT_AUTH, timeout=30) as client:
        res = client.post(path, content=upload, headers={"content-type": "application/fhir+json"})
        assert res.status_code == 413, res.text[:300]
        assert res.json()["issue"][0]["code"] == "too-long"
        assert res.headers["connection"] == "close"
        # the server stopped reading: the client got only the limit plus what socket buffers hold
        assert upload.sent < 32 * 1024 * 1024, upload.sent
        assert client.get("/health/live").status_code == 200  # and the next request is served


@pytest.mark.parametrize("path", ["/fhir/Patient", "/mediator/patient"])
def test_a_declared_length_over_the_limit_is_refused_before_the_body(
    live: tuple[str, Any], path: str
) -> None:
    url, _app = live
    with httpx.Client(base_url=url, auth=CLIENT_AUTH, timeout=30) as client:
        res = client.post(
            path, content=b"{" + b" " * LIMIT + b"}", headers={"content-type": "application/json"}
        )
        assert res.status_code == 413 and res.json()["resourceType"] == "OperationOutcome"
        assert res.headers["connection"] == "close"


def test_a_body_at_the_limit_is_read(live: tuple[str, Any]) -> None:
    url, _app = live
    body = httpx.Request("POST", "/", json=patient_body(str(uuid.uuid4()))).content
    padded = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    assert len(padded) == LIMIT
    with httpx.Client(base_url=url, auth=CLIENT_AUTH, timeout=30) as client:
        res = client.post("/fhir/Patient", content=padded, headers={"content-type": "application/fhir+json"})
        assert res.status_code == 201, res.text


def test_after_a_crash_the_kept_alive_connection_still_works(
    live: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 500 says ``Connection: close`` (the server closes after it), so a client that keeps
    connections alive opens a new one for its next request instead of meeting a reset."""
    url, app = live

    async def crash(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.state.services.ltfu.patients, "upsert", crash)
    with httpx.Client(base_url=url, auth=CLIENT_AUTH, timeout=10) as client:
        for _ in range(20):  # the reset was a race: give it many chances
            res = client.post("/mediator/patient", json=patient_body(str(uuid.uuid4())))
            assert res.status_code == 500
            assert res.headers["connection"] == "close"
            assert res.json()["issue"][0]["code"] == "exception"
            assert "a bug" not in res.text  # nothing of the exception leaks to the client
            assert client.get("/fhir/metadata").status_code == 200


@pytest.mark.parametrize("path", ["/fhir/Patient", "/mediator/service-request"])
def test_a_client_gone_mid_body_is_no_crash(
    live: tuple[str, Any], path: str, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that gives up halfway through sending its body (a load balancer's timeout, an
    impatient script under overload) is logged as gone, not as the server's unexpected error."""
    import base64
    import contextlib
    import logging
    import socket
    import sqlite3
    import time

    caplog.set_level(logging.INFO, logger="cht_interop.kit.guard")
    url, _app = live
    host, port = httpx.URL(url).host, httpx.URL(url).port
    user, password = CLIENT_AUTH
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    with socket.create_connection((host, port or 80)) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {token}\r\n"
            "Content-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n"
            '{"resourceType": '.encode()
        )
        time.sleep(0.2)  # the route is reading the body when the client goes
    with httpx.Client(base_url=url, auth=CLIENT_AUTH, timeout=30) as client:
        deadline = time.monotonic() + 10
        while not any("gone" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health/live").status_code == 200
    assert any("gone" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], [
        r.getMessage() for r in caplog.records
    ]
    # the transaction log says the client left (499), not that the server failed (500)
    database = sqlite_url.removeprefix("sqlite:///")
    statuses: list[int] = []
    while not statuses and time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(database)) as conn:
            statuses = [
                s for (s,) in conn.execute("SELECT status FROM journal_entries WHERE path = ?", (path,))
            ]
        time.sleep(0.05)
    assert statuses == [499]
