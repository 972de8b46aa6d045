"""Fixtures for the FHIR tests: the real app over ASGI with its lifespan, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cht_interop.app import create_app
from cht_interop.fhir.store import FhirStore
from tests.conftest import CLIENT_AUTH, make_settings


@pytest.fixture
async def app(tmp_path: Path, database_url: str) -> AsyncIterator[object]:
    application = create_app(make_settings(tmp_path, database_url), run_worker=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test", auth=CLIENT_AUTH) as c:
        yield c


@pytest.fixture
def store(app: object) -> FhirStore:
    s = app.state.services.fhir_store  # type: ignore[attr-defined]
    assert isinstance(s, FhirStore)
    return s


def patient(value: str = "p-1", system: str = "cht", **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": value}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1990-04-01",
    }
    body.update(extra)
    return body
