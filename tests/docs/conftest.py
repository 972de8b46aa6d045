"""The real app (embedded FHIR store) over ASGI, authenticated as the interop client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cht_interop.app import create_app
from tests.conftest import CLIENT_AUTH, make_settings


@pytest.fixture
async def app(tmp_path: Path, database_url: str) -> AsyncIterator[Any]:
    application = create_app(make_settings(tmp_path, database_url), run_worker=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", auth=CLIENT_AUTH) as c:
        yield c


@pytest.fixture
async def anonymous(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
