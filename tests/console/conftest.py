"""The real app (embedded FHIR store, outbox, CHT double) with a browser-like client for /console.

Until clients carry roles, the authenticator's ``login`` is given an ``admin`` client with the
admin role here (a subclass of the real one: same scrypt check, roles added); the end-to-end test
logs in for real through ``CONSOLE_ADMINS`` instead.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from cht_interop.gateway.auth import ClientAuthenticator
from cht_interop.gateway.passwords import hash_password
from cht_interop.gateway.principals import Principal, Role
from cht_interop.services import Services
from tests.ltfu.conftest import app, cht, cht_server, client, drain, services, settings_overrides  # noqa: F401

ADMIN = ("admin", "Admin-console-pw-1")
INTEROP = ("interop-client", "test-password")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class RolesAuthenticator(ClientAuthenticator):
    """The real authenticator, whose login also says each client's roles (what the gateway adds)."""

    roles: dict[str, frozenset[Role]] = field(default_factory=dict)

    async def login(self, client_id: str, password: str) -> Principal | None:
        found = await super().login(client_id, password)
        if found is None:
            return None
        return Principal(client_id, client_id, self.roles.get(client_id, frozenset({Role.INTEROP})))


@pytest.fixture
def with_admin(services: Services) -> None:  # noqa: F811
    services.authenticator = RolesAuthenticator(
        {INTEROP[0]: hash_password(INTEROP[1]), ADMIN[0]: hash_password(ADMIN[1])},
        roles={ADMIN[0]: frozenset({Role.ADMIN})},
    )


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
