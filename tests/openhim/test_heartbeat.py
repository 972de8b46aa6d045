"""The app registers and heartbeats in the background; OpenHIM's state never stops the service."""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from cht_interop.app import create_app
from cht_interop.openhim.mediator import URN
from cht_interop.services import Services
from tests.conftest import CLIENT_AUTH, make_settings
from tests.openhim.conftest import ROOT, until
from tests.support.live import free_port, serve_in_thread
from tests.support.openhim_double import OpenHimDouble

PASSWORD = ROOT[1]


def openhim_settings(tmp_path: Path, sqlite_url: str, url: str, **more: Any) -> Any:
    values: dict[str, Any] = {
        "OPENHIM_API_URL": url,
        "OPENHIM_USERNAME": ROOT[0],
        "OPENHIM_PASSWORD": PASSWORD,
        "OPENHIM_HEARTBEAT_SECONDS": 0.05,
        "OPENHIM_MAX_BACKOFF_SECONDS": 0.2,
    }
    return make_settings(tmp_path, sqlite_url, **{**values, **more})


@asynccontextmanager
async def running(settings: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings, run_worker=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interop") as client:
            yield app, client


def services(app: FastAPI) -> Services:
    result: Services = app.state.services
    return result


async def test_registers_then_heartbeats_with_uptime(
    core: tuple[OpenHimDouble, str], tmp_path: Path, sqlite_url: str
) -> None:
    double, url = core
    async with running(openhim_settings(tmp_path, sqlite_url, url)) as (_app, client):
        await until(lambda: len(double.heartbeats(URN)) >= 4, what="four heartbeats")
        ready = (await client.get("/health/ready")).json()
    beats = [s.body for s in double.heartbeats(URN)]
    assert beats[0]["config"] is True and all("config" not in b for b in beats[1:])
    uptimes = [b["uptime"] for b in beats]
    assert uptimes == sorted(uptimes) and uptimes[0] >= 0
    assert double.mediators[URN]["_uptime"] == uptimes[-1]
    assert ready["status"] == "ok"
    details = ready["openhim"]
    assert details["state"] == "registered" and details["registered"] is True
    assert details["auth_scheme"] == "basic" and details["last_error"] is None
    assert details["last_heartbeat"] is not None


async def test_old_core_gets_token_headers(
    old_core: tuple[OpenHimDouble, str], tmp_path: Path, sqlite_url: str
) -> None:
    double, url = old_core
    async with running(openhim_settings(tmp_path, sqlite_url, url)) as (_app, client):
        await until(lambda: len(double.heartbeats(URN)) >= 2, what="heartbeats")
        assert (await client.get("/health/ready")).json()["openhim"]["auth_scheme"] == "token"
    assert {s.scheme for s in double.heartbeats(URN)} == {"token"}


async def test_down_at_start_then_up(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens on core's port at start: the app serves meanwhile, then registers."""
    caplog.set_level(logging.DEBUG)  # every logger, httpx's too
    port = free_port()
    settings = openhim_settings(tmp_path, sqlite_url, f"http://ops:Url-Secret-7@127.0.0.1:{port}")
    started = time.monotonic()
    async with running(settings) as (app, client):
        assert time.monotonic() - started < 5  # the lifespan did not wait for OpenHIM
        await until(lambda: services(app).openhim.state == "unavailable", what="unavailable")  # type: ignore[union-attr]
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/fhir/Patient", auth=CLIENT_AUTH)).status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["openhim"]["registered"] is False
        assert "cannot be reached" in ready.json()["openhim"]["last_error"]
        status = services(app).openhim
        assert status is not None
        await until(lambda: status.failures >= 3, what="three failed attempts")
        double = OpenHimDouble()
        with serve_in_thread(double.app(), port=port):
            await until(lambda: len(double.heartbeats(URN)) >= 1, what="registration once core is up")
            # core counts the heartbeat before its answer reaches the mediator: wait for the answer
            await until(lambda: status.state == "registered", what="the heartbeat's answer read")
            assert (await client.get("/health/ready")).json()["openhim"]["state"] == "registered"
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("cht_interop.openhim")]
    assert len([m for m in lines if "unavailable" in m]) == 1, lines  # one line per state, not per attempt
    assert len([m for m in lines if "registered at" in m]) == 1, lines
    for secret in (PASSWORD, "Url-Secret-7"):
        assert all(secret not in r.getMessage() for r in caplog.records)


async def test_slow_or_503_core_never_blocks(
    core: tuple[OpenHimDouble, str], tmp_path: Path, sqlite_url: str
) -> None:
    double, url = core
    double.delay = 3.0
    settings = openhim_settings(tmp_path, sqlite_url, url, HTTP_TIMEOUT_SECONDS=0.2)
    started = time.monotonic()
    async with running(settings) as (app, client):
        assert time.monotonic() - started < 2
        assert (await client.get("/health/live")).status_code == 200
        status = services(app).openhim
        assert status is not None
        await until(lambda: status.state == "unavailable", what="timeout noticed")
        assert "did not answer in time" in (status.last_error or "")
        double.delay = 0.0
        double.down = True
        await until(lambda: "503" in (status.last_error or ""), what="503 noticed")
        assert (await client.get("/health/ready")).status_code == 200
        double.down = False
        await until(lambda: status.state == "registered", what="registered once core answers")


async def test_refused_credentials(
    core: tuple[OpenHimDouble, str], tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    double, url = core
    caplog.set_level(logging.INFO, logger="cht_interop.openhim")
    settings = openhim_settings(tmp_path, sqlite_url, url, OPENHIM_PASSWORD="Wrong-Secret-9")
    async with running(settings) as (app, client):
        await until(lambda: services(app).openhim.state == "refused", what="refused")  # type: ignore[union-attr]
        assert (await client.get("/health/ready")).status_code == 200
    assert URN not in double.mediators
    assert all("Wrong-Secret-9" not in r.getMessage() for r in caplog.records)


async def test_config_from_core_applied_live_and_kept(
    core: tuple[OpenHimDouble, str], tmp_path: Path, sqlite_url: str
) -> None:
    double, url = core
    settings = openhim_settings(tmp_path, sqlite_url, url)
    async with running(settings) as (app, _client):
        await until(lambda: len(double.heartbeats(URN)) >= 1, what="a heartbeat")
        config = dict(double.mediators[URN]["config"])
        new = {
            **config,
            "ltfu_list_sync_max": 3,
            "follow_up_expiry_seconds": 3600,
            "delivery_horizon_seconds": 120,
        }
        assert double.put_config(URN, new) == 200
        live = services(app).settings.live
        await until(lambda: live.ltfu_list_sync_max == 3, what="config applied")
        assert (live.follow_up_expiry_seconds, live.delivery_horizon_seconds) == (3600, 120)
    kept = tmp_path / "data" / "openhim-config.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600

    # a restart with core down: the kept values override the environment's
    double.down = True
    restarted = openhim_settings(tmp_path, sqlite_url, url)
    async with running(restarted) as (app, _client):
        live = services(app).settings.live
        assert (live.ltfu_list_sync_max, live.delivery_horizon_seconds) == (3, 120)


async def test_invalid_config_values_are_refused(
    core: tuple[OpenHimDouble, str], tmp_path: Path, sqlite_url: str
) -> None:
    """Core checks only the type: a negative or fractional count is ours to refuse."""
    double, url = core
    async with running(openhim_settings(tmp_path, sqlite_url, url)) as (app, _client):
        await until(lambda: len(double.heartbeats(URN)) >= 1, what="a heartbeat")
        config = dict(double.mediators[URN]["config"])
        bad = {
            **config,
            "ltfu_list_sync_max": 2.5,
            "delivery_horizon_seconds": -1,
            "follow_up_expiry_seconds": 60,
        }
        assert double.put_config(URN, bad) == 200
        live = services(app).settings.live
        await until(lambda: live.follow_up_expiry_seconds == 60, what="the valid value applied")
        assert (live.ltfu_list_sync_max, live.delivery_horizon_seconds) == (1000, 24 * 3600)


async def test_without_openhim_nothing_runs(tmp_path: Path, sqlite_url: str) -> None:
    async with running(make_settings(tmp_path, sqlite_url)) as (app, client):
        assert services(app).openhim is None
        assert "openhim" not in (await client.get("/health/ready")).json()
