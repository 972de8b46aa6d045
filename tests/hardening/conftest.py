"""The real app (embedded FHIR store, the CHT double on loopback) for the hardening tests, and the
one question most of them ask: did a refused request leave anything behind?"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from cht_interop.app import create_app
from cht_interop.db import metadata
from cht_interop.services import Services
from tests.conftest import CLIENT_AUTH, make_settings
from tests.ltfu.conftest import cht_server  # noqa: F401  (a fixture)


@pytest.fixture
def setting_overrides() -> dict[str, Any]:
    """Settings a test module sets for its app (override this fixture in the module)."""
    return {}


@pytest.fixture
async def app(
    tmp_path: Path,
    database_url: str,
    cht_server: Any,  # noqa: F811
    setting_overrides: dict[str, Any],
) -> AsyncIterator[Any]:
    _double, url = cht_server
    settings = make_settings(
        tmp_path, database_url, CHT_URL=url, CHT_PASSWORD="pass-admin-1", **setting_overrides
    )
    application = create_app(settings, run_worker=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def services(app: Any) -> Services:
    s: Services = app.state.services
    return s


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    # raise_app_exceptions=False: a crash must show as the 500 a client sees, not a test error
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", auth=CLIENT_AUTH) as c:
        yield c


async def row_counts(services: Services) -> dict[str, int]:
    """Rows in every table of the application: what a write, or half of one, leaves behind."""
    counts = {}
    async with services.db.connect() as conn:
        for table in metadata.sorted_tables:
            counts[table.name] = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
    return counts


def assert_outcome(res: httpx.Response, status: int | tuple[int, ...] = (400, 413, 422)) -> dict[str, Any]:
    """A 4xx answer whose body is an OperationOutcome with at least one error issue."""
    wanted = (status,) if isinstance(status, int) else status
    assert res.status_code in wanted, (res.status_code, res.text[:500])
    body: dict[str, Any] = res.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert any(i["severity"] in ("error", "fatal") for i in body["issue"]), body
    return body
