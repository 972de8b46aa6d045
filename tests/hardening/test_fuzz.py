"""A property-based fuzzer over every /mediator route and the main /fhir interactions: valid
example requests with JSON of the wrong type put at any position (or elements removed, wrapped,
unwrapped), sent over real HTTP to the whole app. The property: never a 5xx, and every refusal
is an OperationOutcome.

Bounded for CI (``derandomize``: the same examples each run, the whole file well under a
minute); ``HYPOTHESIS_PROFILE=fuzz-long`` explores ten times as many, at random.
"""

from __future__ import annotations

import copy
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cht_interop.app import create_app
from tests.conftest import CLIENT_AUTH, make_settings
from tests.ltfu.conftest import (
    cht_server,  # noqa: F401  (fixture)
    encounter_body,
    endpoint_body,
    organization_body,
    patient_body,
    service_request_body,
)
from tests.support.live import serve_in_thread

settings.register_profile(
    "fuzz",
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz-long",
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fuzz")
if PROFILE not in ("fuzz", "fuzz-long"):
    PROFILE = "fuzz"

# -- the server and what it already holds ------------------------------------------------------


@dataclass
class Live:
    http: httpx.Client
    patient_cht_id: str  # a patient the CHT pushed
    fhir_patient_id: str  # a Patient in the FHIR store (update, patch)
    service_request_id: str  # a started follow-up (revoke, cancel)


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
    cht_server: tuple[Any, str],  # noqa: F811
) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copy(sqlite_template, folder / "db.sqlite3")
    _double, cht_url = cht_server
    app_settings = make_settings(
        folder,
        f"sqlite:///{folder / 'db.sqlite3'}",
        CHT_URL=cht_url,
        CHT_PASSWORD="pass-admin-1",
        MAX_BODY_BYTES=256 * 1024,
    )
    with (
        serve_in_thread(create_app(app_settings, run_worker=False)) as url,
        httpx.Client(base_url=url, auth=CLIENT_AUTH, timeout=30) as http,
    ):
        ep = http.post("/mediator/endpoint", json=endpoint_body("fuzz-cb"))
        org = http.post("/mediator/organization", json=organization_body(ep.json()["id"], "org-1"))
        cht_id = str(uuid.uuid4())
        pushed = http.post("/mediator/patient", json=patient_body(cht_id))
        started = http.post("/mediator/service-request", json=service_request_body(cht_id))
        patient = http.post("/fhir/Patient", json=RESOURCES["Patient"])
        for res in (ep, org, pushed, started, patient):
            assert res.status_code in (200, 201), res.text
        sr_id = started.headers["location"].rsplit("/", 1)[-1]
        yield Live(http, cht_id, patient.json()["id"], sr_id)


# -- valid examples ------------------------------------------------------------------------------

EXT = [{"url": "http://example.org/ext", "valueString": "x"}]
RESOURCES: dict[str, dict[str, Any]] = {
    "Patient": {
        "resourceType": "Patient",
        "meta": {"profile": ["http://example.org/p"], "tag": [{"system": "s", "code": "c"}]},
        "extension": EXT,
        "identifier": [{"system": "urn:fuzz", "value": "p-1"}],
        "active": True,
        "name": [{"use": "official", "family": "Doe", "given": ["Jane", "Q"]}],
        "telecom": [{"system": "phone", "value": "+254700000000"}],
        "gender": "female",
        "birthDate": "1990-04-01",
        "address": [{"line": ["1 Main St"], "city": "Kisumu", "period": {"start": "2020-01-01"}}],
        "contained": [{"resourceType": "Organization", "id": "o1", "name": "Clinic"}],
        "managingOrganization": {"reference": "#o1"},
    },
    "ServiceRequest": {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "urn:fuzz", "value": "sr-1"}],
        "status": "active",
        "intent": "order",
        "priority": "routine",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}], "text": "follow-up"},
        "subject": {"reference": "Patient/p-missing", "display": "Jane"},
        "occurrenceDateTime": "2024-05-01T10:00:00+03:00",
        "quantityQuantity": {"value": 1.5, "unit": "d"},
        "reasonCode": [{"text": "Missed ART refill"}],
    },
    "Encounter": {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"text": "visit"}],
        "period": {"start": "2024-05-01", "end": "2024-05-02"},
        "length": {"value": 30, "unit": "min"},
        "participant": [{"type": [{"text": "CHW"}]}],
    },
    "Observation": {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "effectiveDateTime": "2024-05-01",
        "valueQuantity": {"value": 61.5, "unit": "kg"},
        "component": [{"code": {"text": "x"}, "valueBoolean": True}],
    },
    "Subscription": {
        "resourceType": "Subscription",
        "status": "off",
        "reason": "fuzz",
        "criteria": "Encounter?status=finished",
        "channel": {
            "type": "rest-hook",
            "endpoint": "https://emr.example.org/hook",
            "payload": "application/fhir+json",
            "header": ["Authorization: Bearer x"],
        },
    },
    "Task": {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "identifier": [{"system": "urn:fuzz", "value": "t-1"}],
        "input": [{"type": {"text": "x"}, "valueInteger": 3}],
        "restriction": {"repetitions": 1, "period": {"end": "2025-01-01"}},
    },
    "Endpoint": {
        "resourceType": "Endpoint",
        "status": "active",
        "connectionType": {"code": "hl7-fhir-rest"},
        "payloadType": [{"text": "FHIR"}],
        "address": "https://emr.example.org/fhir",
    },
    "Organization": {"resourceType": "Organization", "name": "Clinic", "active": True, "alias": ["C"]},
}


def transaction(kind: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {
                "fullUrl": "urn:uuid:0b9a4d4e-0000-4000-8000-000000000001",
                "resource": copy.deepcopy(RESOURCES["Patient"]),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:fuzz|p-9"},
            },
            {
                "resource": {
                    **copy.deepcopy(RESOURCES["Observation"]),
                    "subject": {"reference": "urn:uuid:0b9a4d4e-0000-4000-8000-000000000001"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {"request": {"method": "GET", "url": "Patient?identifier=urn:fuzz|p-1&_count=2"}},
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": "W10=",
                },
                "request": {"method": "PATCH", "url": "Patient?identifier=urn:fuzz|nobody"},
            },
        ],
    }


# -- the mutations -------------------------------------------------------------------------------

WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["", " ", "Patient/", "urn:uuid:x", "2024-13-45", "#", "$", "?", "%", "\u0000"]),
    st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=4)), max_size=3),
    st.dictionaries(
        st.sampled_from(["resourceType", "reference", "value", "url", "x"]), st.text(max_size=4), max_size=2
    ),
    st.sampled_from(
        [[], {}, [[]], [{}], [None], {"resourceType": "Patient"}, {"resourceType": "Nope"}, {"reference": 5}]
    ),
)


def positions(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (the root excluded)."""
    out = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += positions(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += positions(value, (*path, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, example: Any) -> Any:
    """``example`` with one to three of: a wrong-typed value, an element removed, a value wrapped
    in an array, an array replaced by its first item."""
    body = copy.deepcopy(example)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        spots = positions(body)
        if not spots:
            break
        path = draw(st.sampled_from(spots))
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        how = draw(st.sampled_from(["wrong", "wrong", "wrong", "remove", "wrap", "unwrap"]))
        if how == "remove" and isinstance(parent, dict):
            del parent[key]
        elif how == "wrap":
            parent[key] = [parent[key]]
        elif how == "unwrap" and isinstance(parent[key], list) and parent[key]:
            parent[key] = parent[key][0]
        else:
            parent[key] = copy.deepcopy(draw(WRONG))  # the sampled constants are shared objects
    return body


def check(res: httpx.Response) -> None:
    """Never a 5xx; a refusal is an OperationOutcome."""
    assert res.status_code < 500, (res.status_code, res.text[:500])
    if res.status_code >= 400:
        assert res.json()["resourceType"] == "OperationOutcome", res.text[:300]


def send(live: Live, method: str, path: str, body: Any, content_type: str = "application/fhir+json") -> None:
    content = httpx.Request("POST", "/", json=body).content
    check(live.http.request(method, path, content=content, headers={"content-type": content_type}))


# -- the properties ------------------------------------------------------------------------------

MEDIATOR = ["endpoint", "organization", "patient", "service-request", "list", "revoke", "cancel", "encounter"]


def mediator_example(live: Live, route: str) -> tuple[str, str, Any]:
    cht_id = live.patient_cht_id
    sr = service_request_body(cht_id)
    return {
        "endpoint": ("POST", "/mediator/endpoint", endpoint_body("fuzz-ep")),
        "organization": ("POST", "/mediator/organization", organization_body("1", "org-fuzz", ["athena"])),
        "patient": ("POST", "/mediator/patient", patient_body(cht_id)),
        "service-request": ("POST", "/mediator/service-request", sr),
        "list": (
            "POST",
            "/mediator/service-request",
            {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"resource": sr}, {"resource": {**sr, "id": "x"}}],
            },
        ),
        "revoke": (
            "PUT",
            f"/mediator/service-request/{live.service_request_id}",
            {**sr, "id": live.service_request_id, "status": "revoked"},
        ),
        "cancel": (
            "POST",
            "/mediator/service-request/999999/$cancel",
            {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "moved"}]},
        ),
        "encounter": (
            "POST",
            "/mediator/encounter",
            encounter_body(cht_id, str(uuid.uuid4()), basedOn=[{"reference": "ServiceRequest/999999"}]),
        ),
    }[route]


@settings.get_profile(PROFILE)
@given(data=st.data())
def test_mediator_routes_never_answer_5xx(live: Live, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(MEDIATOR))
    method, path, example = mediator_example(live, route)
    send(live, method, path, data.draw(mutated(example)), "application/json")


@settings.get_profile(PROFILE)
@given(rtype=st.sampled_from(sorted(RESOURCES)), data=st.data())
def test_fhir_create_and_update_never_answer_5xx(live: Live, rtype: str, data: st.DataObject) -> None:
    body = data.draw(mutated(RESOURCES[rtype]))
    if data.draw(st.booleans()):
        send(live, "POST", f"/fhir/{rtype}", body)
    else:
        send(live, "PUT", f"/fhir/{rtype}/fuzz-{rtype.lower()}", body)


@settings.get_profile(PROFILE)
@given(kind=st.sampled_from(["transaction", "batch"]), data=st.data())
def test_fhir_transaction_and_batch_never_answer_5xx(live: Live, kind: str, data: st.DataObject) -> None:
    send(live, "POST", "/fhir", data.draw(mutated(transaction(kind))))


PATCHES: list[tuple[str, Any]] = [
    (
        "application/json-patch+json",
        [
            {"op": "replace", "path": "/gender", "value": "male"},
            {"op": "add", "path": "/name/0/given/-", "value": "X"},
        ],
    ),
    (
        "application/fhir+json",
        {
            "resourceType": "Parameters",
            "parameter": [
                {
                    "name": "operation",
                    "part": [
                        {"name": "type", "valueCode": "replace"},
                        {"name": "path", "valueString": "Patient.birthDate"},
                        {"name": "value", "valueDate": "1991-01-01"},
                    ],
                }
            ],
        },
    ),
]


@settings.get_profile(PROFILE)
@given(which=st.sampled_from([0, 1]), data=st.data())
def test_fhir_patch_never_answers_5xx(live: Live, which: int, data: st.DataObject) -> None:
    content_type, document = PATCHES[which]
    send(live, "PATCH", f"/fhir/Patient/{live.fhir_patient_id}", data.draw(mutated(document)), content_type)


SEARCH_PARAMS = [
    "_id", "identifier", "name", "family", "gender", "birthdate", "subject", "patient", "status", "code",
    "_count", "_sort", "_include", "_revinclude", "_elements", "_summary", "_total", "_lastUpdated",
    "_has:Observation:subject:status", "subject:Patient.name", "_tag", "_profile", "criteria", "date",
    "name:exact", "name:contains", "identifier:missing", "_offset", "_format", "nonsense",
]  # fmt: skip
ODD_VALUES = [
    "gt2024", "le1990-13", "lt", "|", "a|b|c", "Patient/1", "-1", "0", "99999999999999999999",
    "Patient:subject", "*", "true", "1e400", "ge2024-01-01T25:00", ",", "a,b", "%00",
]  # fmt: skip
VALUES = st.one_of(st.text(max_size=16), st.sampled_from(ODD_VALUES))


@settings.get_profile(PROFILE)
@given(
    rtype=st.sampled_from(sorted(RESOURCES)),
    params=st.lists(st.tuples(st.sampled_from(SEARCH_PARAMS), VALUES), min_size=1, max_size=3),
)
def test_fhir_search_never_answers_5xx(live: Live, rtype: str, params: list[tuple[str, str]]) -> None:
    query = "&".join(f"{quote(k, safe=':._')}={quote(v, safe='')}" for k, v in params)
    check(live.http.get(f"/fhir/{rtype}?{query}"))
