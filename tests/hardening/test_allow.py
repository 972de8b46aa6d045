"""405 answers name what the path really serves: for every /fhir, /mediator and /health path
shape, ``Allow`` (on OPTIONS and on any other refused method) lists exactly the methods that are
not refused with a 405."""

from __future__ import annotations

import httpx
import pytest

PATHS = [
    "/fhir",
    "/fhir/metadata",
    "/fhir/_history",
    "/fhir/Patient",
    "/fhir/Patient/_search",
    "/fhir/Patient/_history",
    "/fhir/Patient/$validate",
    "/fhir/Patient/1",
    "/fhir/Patient/1/_history",
    "/fhir/Patient/1/_history/1",
    "/fhir/Patient/1/$validate",
    "/mediator/",
    "/mediator/endpoint",
    "/mediator/organization",
    "/mediator/patient",
    "/mediator/service-request",
    "/mediator/service-request/1",
    "/mediator/service-request/1/$cancel",
    "/mediator/encounter",
    "/mediator/ltfu-lists/1",
    "/health/live",
    "/health/ready",
]
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """Routing is no database matter: SQLite only."""
    return sqlite_url


@pytest.mark.parametrize("path", PATHS)
async def test_allow_lists_the_methods_the_path_serves(client: httpx.AsyncClient, path: str) -> None:
    options = await client.options(path)
    assert options.status_code == 405
    allowed = [m.strip() for m in options.headers["allow"].split(",")]
    assert allowed and set(allowed) <= set(METHODS), allowed
    if options.headers.get("content-type", "").startswith("application/fhir+json"):
        assert options.json()["resourceType"] == "OperationOutcome"
    for method in METHODS:
        res = await client.request(method, path)
        if method in allowed:
            assert res.status_code != 405, (method, path, res.text[:200])
        else:
            assert res.status_code == 405, (method, path, res.status_code)
            assert [m.strip() for m in res.headers["allow"].split(",")] == allowed
