"""The real app (embedded FHIR store, outbox, CHT double) with a browser-like client for /console.

The administrator is a real client with the admin role, added through the app's ClientDirectory
(what an administrator does with ``cht-interop clients add``); the interop client is the one the
app makes at start.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cht_interop.delivery import outbox
from cht_interop.gateway.clients import ClientDirectory
from cht_interop.gateway.principals import Role
from cht_interop.services import Services
from tests.ltfu.conftest import app, cht, cht_server, client, drain, services, settings_overrides  # noqa: F401

ADMIN = ("admin", "Admin-console-pw-1")
INTEROP = ("interop-client", "test-password")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def directory_of(services: Services) -> ClientDirectory:  # noqa: F811
    found = services.authenticator.directory
    assert found is not None, "the app checks clients against the database"
    return found


@pytest.fixture
async def with_admin(services: Services) -> None:  # noqa: F811
    await directory_of(services).add(ADMIN[0], frozenset({Role.ADMIN}), ADMIN[1], "Administrator")


@pytest.fixture
async def browser(app: Any, with_admin: None) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    """A client that keeps cookies, like a browser (no Basic credentials)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def log_in(browser: httpx.AsyncClient, who: tuple[str, str] = ADMIN) -> httpx.Response:
    form = await browser.get("/console/login")
    assert form.status_code == 200
    return await browser.post(
        "/console/login",
        data={"client_id": who[0], "password": who[1], "csrf": csrf_of(form), "next": "/console/"},
    )


@pytest.fixture
async def admin(browser: httpx.AsyncClient) -> httpx.AsyncClient:
    """The browser, logged in as an administrator."""
    res = await log_in(browser)
    assert res.status_code == 303, res.text
    return browser


async def until_dead(services: Services, drain: Any, kind: str) -> outbox.JobRecord:  # noqa: F811
    """Run the worker until a ``kind`` job is dead-lettered (a short DELIVERY_HORIZON_SECONDS)."""
    for _ in range(100):
        await drain()
        async with services.db.connect() as conn:
            dead = await outbox.list_jobs(conn, kind=kind, status="dead")
        if dead:
            return dead[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} job was dead-lettered")
