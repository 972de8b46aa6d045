"""Every route x every kind of caller: who gets in, who gets 401, who gets 403.

The routes are read off the app (``fastapi.routing.iter_route_contexts``), so a route added later
without a rule in ``gateway/policy.py`` and a line in ``EXPECTED`` below fails here.
"""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from cht_interop.app import create_app
from cht_interop.gateway.policy import explicit_rule, is_open
from cht_interop.gateway.principals import Role
from tests.conftest import make_settings

REQUESTER, CHT, ADMIN, INTEROP = "requester", "cht", "admin", "interop"
ANY = frozenset({REQUESTER, CHT, ADMIN, INTEROP})
REQ = frozenset({REQUESTER, ADMIN, INTEROP})
PUSH = frozenset({CHT, ADMIN, INTEROP})
WRITE = frozenset({ADMIN, INTEROP})
OPEN = "open"

# (method, route path) -> who may call it; "open" needs no client at all
EXPECTED: dict[tuple[str, str], frozenset[str] | str] = {
    ("GET", "/openapi.json"): ANY,
    ("GET", "/metrics"): ANY,
    ("GET", "/docs"): ANY,
    ("GET", "/docs/assets/{name}"): ANY,
    ("GET", "/health/live"): OPEN,
    ("GET", "/health/ready"): OPEN,
    ("GET", "/mediator/"): ANY,
    ("POST", "/mediator/endpoint"): REQ,
    ("POST", "/mediator/organization"): REQ,
    ("POST", "/mediator/patient"): PUSH,
    ("POST", "/mediator/service-request"): REQ,
    ("GET", "/mediator/ltfu-lists/{list_id}"): REQ,
    ("PUT", "/mediator/service-request/{service_request_id}"): REQ,
    ("POST", "/mediator/service-request/{service_request_id}/$cancel"): REQ,
    ("POST", "/mediator/encounter"): PUSH,
    ("GET", "/fhir/metadata"): ANY,
    ("GET", "/fhir/_history"): REQ,
    ("POST", "/fhir/{rtype}/$validate"): REQ,
    ("GET", "/fhir/{rtype}/$validate"): REQ,
    ("POST", "/fhir/{rtype}/{rid}/$validate"): REQ,
    ("GET", "/fhir/{rtype}/{rid}/$validate"): REQ,
    ("POST", "/fhir"): WRITE,
    ("POST", "/fhir/"): WRITE,
    ("GET", "/fhir/{rtype}"): REQ,
    ("GET", "/fhir/{rtype}/"): REQ,
    ("POST", "/fhir/{rtype}/_search"): REQ,
    ("POST", "/fhir/{rtype}"): WRITE,
    ("POST", "/fhir/{rtype}/"): WRITE,
    ("POST", "/fhir/{rtype}/{rid}"): WRITE,
    ("GET", "/fhir/{rtype}/_history"): REQ,
    ("GET", "/fhir/{rtype}/{rid}"): REQ,
    ("GET", "/fhir/{rtype}/{rid}/_history"): REQ,
    ("GET", "/fhir/{rtype}/{rid}/_history/{vid}"): REQ,
    ("PUT", "/fhir/{rtype}/{rid}"): WRITE,
    ("PUT", "/fhir/{rtype}"): WRITE,
    ("PUT", "/fhir/{rtype}/"): WRITE,
    ("PATCH", "/fhir/{rtype}/{rid}"): WRITE,
    ("PATCH", "/fhir/{rtype}"): WRITE,
    ("PATCH", "/fhir/{rtype}/"): WRITE,
    ("DELETE", "/fhir/{rtype}/{rid}"): WRITE,
    ("DELETE", "/fhir/{rtype}"): WRITE,
    ("DELETE", "/fhir/{rtype}/"): WRITE,
}
# beyond the route templates: the CHT's push of Practitioners (the reference's FHIR_practitioner)
EXTRA: list[tuple[str, str, frozenset[str]]] = [
    ("POST", "/fhir/Practitioner", PUSH),
    ("PUT", "/fhir/Practitioner/p1", WRITE),
    ("POST", "/fhir/PractitionerRole", WRITE),
]
SAMPLE = {"rtype": "Patient", "rid": "no-such-id", "vid": "1", "list_id": "no-such-list"}
SAMPLE["service_request_id"] = "no-such-sr"
SAMPLE["name"] = "swagger-ui.css"
PASSWORDS = {REQUESTER: "requester-pass-1", CHT: "cht-pass-0001", ADMIN: "admin-pass-001"}


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


CALLERS: dict[str, dict[str, str]] = {
    "none": {},
    "wrong password": {"authorization": _basic("interop-client", "not-the-password")},
    "unknown client": {"authorization": _basic("nobody", "test-password")},
    REQUESTER: {"authorization": _basic("emr", PASSWORDS[REQUESTER])},
    CHT: {"authorization": _basic("cht-push", PASSWORDS[CHT])},
    ADMIN: {"authorization": _basic("root", PASSWORDS[ADMIN])},
    INTEROP: {"authorization": _basic("interop-client", "test-password")},
}


def app_routes(app: FastAPI) -> list[tuple[str, str]]:
    found = set()
    for route in iter_route_contexts(app.routes):
        assert route.path is not None
        for method in route.methods or ():
            if method != "HEAD":
                found.add((method, route.path))
    return sorted(found)


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE[m.group(1)], path)


@pytest.fixture
async def app(tmp_path: Path, sqlite_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(tmp_path, sqlite_url), run_worker=False)
    async with application.router.lifespan_context(application):
        directory = application.state.services.authenticator.directory
        assert directory is not None
        await directory.add("emr", frozenset({Role.REQUESTER}), PASSWORDS[REQUESTER])
        await directory.add("cht-push", frozenset({Role.CHT}), PASSWORDS[CHT])
        await directory.add("root", frozenset({Role.ADMIN}), PASSWORDS[ADMIN])
        yield application


def test_every_route_has_an_expectation_and_an_explicit_rule(tmp_path: Path, sqlite_url: str) -> None:
    routes = app_routes(create_app(make_settings(tmp_path, sqlite_url), run_worker=False))
    missing = [r for r in routes if r not in EXPECTED]
    assert not missing, (
        f"routes without an expectation here (and maybe a rule in gateway/policy.py): {missing}"
    )
    unruled = [r for r in routes if not is_open(r[1]) and explicit_rule(r[0], concrete(r[1])) is None]
    assert not unruled, (
        f"routes only the default (admin) rule covers: add a rule in gateway/policy.py: {unruled}"
    )


async def test_each_caller_gets_in_exactly_where_its_roles_allow(app: FastAPI) -> None:
    cases: list[tuple[str, str, frozenset[str] | str]] = [
        (method, concrete(path), EXPECTED[(method, path)]) for method, path in app_routes(app)
    ]
    cases += EXTRA
    wrong: list[str] = []
    addresses = (f"10.9.{a}.{b}" for a, b in itertools.product(range(256), range(1, 255)))
    for (method, path, allowed), (caller, headers) in itertools.product(cases, CALLERS.items()):
        # a fresh address per request: this test is not about the failure throttle
        transport = httpx.ASGITransport(app=app, client=(next(addresses), 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
            r = await client.request(method, path, headers=headers, json=body)
        if allowed == OPEN:
            expected = "2xx"
            ok = 200 <= r.status_code < 300
        elif caller not in ANY:
            expected, ok = "401", r.status_code == 401
        elif caller in allowed:
            expected, ok = "in (not 401/403)", r.status_code not in (401, 403)
        else:
            expected = "403 forbidden"
            ok = r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
        if not ok:
            wrong.append(f"{method} {path} as {caller}: {r.status_code}, expected {expected}")
    assert not wrong, "\n".join(wrong)


async def test_a_method_no_route_serves_is_405_with_allow_for_any_client_and_401_for_none(
    app: FastAPI,
) -> None:
    """No handler runs for it, so any authenticated client learns the path's real methods."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        anonymous = await client.delete("/mediator/endpoint")
        answers = {
            caller: await client.delete("/mediator/endpoint", headers=headers)
            for caller, headers in CALLERS.items()
            if caller in ANY
        }
    assert anonymous.status_code == 401
    for caller, r in answers.items():
        assert r.status_code == 405, caller
        assert r.headers["allow"] == "POST", caller


async def test_the_403_is_an_operation_outcome_naming_the_role_needed(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post(
            "/mediator/service-request", json={}, headers={"authorization": CALLERS[CHT]["authorization"]}
        )
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/fhir+json;charset=utf-8"
    assert r.json() == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "forbidden",
                "diagnostics": "Client 'cht-push' may not POST /mediator/service-request: "
                "it needs the role requester",
            }
        ],
    }
    assert PASSWORDS[CHT] not in r.text


async def test_paths_outside_any_route_need_a_client_too_but_not_the_console(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/no/such/thing")).status_code == 401
        assert (await client.get("/openapi.json")).status_code == 401
        # the console has its own session login: the gate lets it through to its login form
        console = await client.get("/console/")
        assert console.status_code == 303 and "/console/login" in console.headers["location"]
        assert (await client.get("/health/live")).status_code == 200


async def test_many_wrong_passwords_from_one_address_get_429_and_the_right_client_still_gets_in(
    app: FastAPI,
) -> None:
    transport = httpx.ASGITransport(app=app, client=("10.8.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        good = {"authorization": CALLERS[INTEROP]["authorization"]}
        assert (await client.get("/fhir/metadata", headers=good)).status_code == 200
        statuses = [
            (await client.get("/fhir/metadata", headers=CALLERS["wrong password"])).status_code
            for _ in range(11)
        ]
        assert statuses == [401] * 10 + [429]
        refused = await client.get("/fhir/metadata", headers=CALLERS["unknown client"])
        assert refused.status_code == 429
        assert 0 < int(refused.headers["retry-after"]) <= 60
        assert refused.json()["issue"][0]["code"] == "throttled"
        assert (await client.get("/fhir/metadata", headers=good)).status_code == 200
