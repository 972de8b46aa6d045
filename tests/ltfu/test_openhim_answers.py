"""Requests OpenHIM core routed (``X-OpenHIM-TransactionID``) answered in ``application/json+openhim``.

Through the real app: the embedded store (no outbound call: no orchestration) and an external FHIR
server over loopback HTTP (one orchestration per call, credentials stripped).
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson

from cht_interop.openhim.mediator import URN
from cht_interop.openhim.response import transaction_status
from tests.conftest import CLIENT_AUTH
from tests.ltfu.conftest import endpoint_body, push_patient, register_requester, service_request_body

# fixtures: the app against an external FHIR server (named ``external_mediator`` here)
from tests.ltfu.test_external_fhir import fhir_server  # noqa: F401
from tests.ltfu.test_external_fhir import mediator as external_mediator  # noqa: F401
from tests.support.cht_double import ChtDouble

TX = {"X-OpenHIM-TransactionID": "65a1b2c3d4e5f60718293a4b", "X-OpenHIM-ClientID": "interop-client"}
BASIC = base64.b64encode(f"{CLIENT_AUTH[0]}:{CLIENT_AUTH[1]}".encode()).decode()


def wrapped(res: httpx.Response) -> dict[str, Any]:
    assert res.headers["content-type"] == "application/json+openhim"
    doc: dict[str, Any] = res.json()
    assert doc["x-mediator-urn"] == URN
    assert isinstance(doc["response"]["body"], str)
    assert doc["response"]["timestamp"].endswith("Z")
    assert "content-length" not in {k.lower() for k in doc["response"]["headers"]}
    return doc


def no_credentials(res: httpx.Response) -> None:
    text = res.text
    for secret in (CLIENT_AUTH[1], BASIC, "pass-admin-1"):
        assert secret not in text
    assert '"authorization"' not in text.lower()


async def test_follow_up_through_openhim_is_wrapped(client: httpx.AsyncClient, cht: ChtDouble) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    body = service_request_body(patient)

    res = await client.post("/mediator/service-request", json=body, headers=TX)

    assert res.status_code == 201  # the plain answer's status (core reads the wrapped one)
    doc = wrapped(res)
    assert doc["status"] == "Successful"
    assert doc["response"]["status"] == 201
    plain = orjson.loads(doc["response"]["body"])
    assert plain["resourceType"] == "Subscription"
    assert plain["criteria"] == f"Encounter?identifier={patient}"
    headers = doc["response"]["headers"]
    assert headers["content-type"].startswith("application/fhir+json")
    sr_id = headers["location"].rsplit("/", 1)[1]
    props = doc["properties"]
    assert props["patientId"] == patient
    assert props["serviceRequestId"] == sr_id
    assert props["taskId"]
    # the embedded store is no network peer, but each call to it is shown as one, marked local
    calls = doc["orchestrations"]
    names = [o["name"] for o in calls]
    assert names[0] == "GET /fhir/Organization (embedded FHIR store)"  # the requester, first
    assert names[-1] == "POST /fhir (embedded FHIR store)"  # the follow-up: one transaction, last
    assert "GET /fhir/Patient (embedded FHIR store)" in names  # the patient, by its CHT id
    for o in calls:
        assert (o["request"]["host"], o["request"]["port"]) == ("embedded FHIR store", "")
        assert o["request"]["timestamp"] <= o["response"]["timestamp"]
        assert o["response"]["status"] == 200
    written = orjson.loads(calls[-1]["response"]["body"])
    assert written["type"] == "transaction-response"
    assert f"ServiceRequest/{sr_id}" in {
        e["response"]["location"].split("/_history")[0] for e in written["entry"]
    }
    assert "error" not in doc
    no_credentials(res)


async def test_client_error_through_openhim_is_completed(client: httpx.AsyncClient) -> None:
    res = await client.post("/mediator/service-request", json={"resourceType": "ServiceRequest"}, headers=TX)

    assert res.status_code == 400
    doc = wrapped(res)
    assert doc["status"] == "Completed"
    assert doc["response"]["status"] == 400
    outcome = orjson.loads(doc["response"]["body"])
    assert outcome["resourceType"] == "OperationOutcome"
    assert "error" not in doc  # a refused request is not retried by core


async def test_unauthenticated_through_openhim_is_wrapped(app: Any) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as anon:
        res = await anon.post("/mediator/patient", json={}, headers=TX)
    assert res.status_code == 401
    doc = wrapped(res)
    assert doc["status"] == "Completed"
    assert doc["response"]["status"] == 401


async def test_without_the_header_the_answer_is_unchanged(client: httpx.AsyncClient) -> None:
    await register_requester(client)
    patient = await push_patient(client)
    plain = await client.post("/mediator/service-request", json={"resourceType": "ServiceRequest"})
    wrapped_res = await client.post(
        "/mediator/service-request", json={"resourceType": "ServiceRequest"}, headers=TX
    )
    assert plain.headers["content-type"].startswith("application/fhir+json")
    assert plain.content == orjson.loads(wrapped_res.content)["response"]["body"].encode()
    # /fhir is never wrapped, header or not
    fhir = await client.get(f"/fhir/Patient?identifier={patient}", headers=TX)
    assert fhir.headers["content-type"].startswith("application/fhir+json")


async def test_external_fhir_calls_become_orchestrations(external_mediator: Any, cht: ChtDouble) -> None:  # noqa: F811
    transport = httpx.ASGITransport(app=external_mediator)
    async with httpx.AsyncClient(transport=transport, base_url="http://mediator", auth=CLIENT_AUTH) as client:
        await register_requester(client)
        patient = await push_patient(client)
        res = await client.post("/mediator/service-request", json=service_request_body(patient), headers=TX)

    assert res.status_code == 201, res.text
    doc = wrapped(res)
    assert doc["status"] == "Successful"
    assert orjson.loads(doc["response"]["body"])["resourceType"] == "Subscription"
    orchestrations = doc["orchestrations"]
    assert orchestrations, "every call to the FHIR server is an orchestration"
    for o in orchestrations:
        req, answer = o["request"], o["response"]
        assert req["host"] == "127.0.0.1" and req["port"].isdigit()
        assert req["path"].startswith("/fhir")
        assert req["method"] in ("GET", "POST", "PUT")
        assert isinstance(req["body"], str) and isinstance(req["querystring"], str)
        assert req["timestamp"].endswith("Z") and answer["timestamp"] >= req["timestamp"]
        assert isinstance(answer["status"], int) and isinstance(answer["body"], str)
        assert not {"authorization", "cookie"} & {k.lower() for k in req["headers"]}
    assert any(o["request"]["method"] == "POST" for o in orchestrations)
    no_credentials(res)


def test_status_follows_core_rules() -> None:
    ok = {"response": {"status": 200}}
    assert transaction_status(201, [ok]) == "Successful"
    assert transaction_status(201, []) == "Successful"
    assert transaction_status(404, [ok]) == "Completed"
    assert transaction_status(201, [{"response": {"status": 404}}]) == "Completed"
    assert transaction_status(201, [ok, {"error": {"message": "x"}}]) == "Completed with error(s)"
    assert transaction_status(200, [{"response": {"status": 503}}]) == "Completed with error(s)"
    assert transaction_status(502, [{"response": {"status": 503}}]) == "Failed"
    assert transaction_status(500, []) == "Failed"


async def test_routed_through_core(app: Any, cht: ChtDouble) -> None:
    """Client → core (the double's router) → mediator: the client gets the plain answer back, and
    core's transaction the status, orchestrations (+ its own) and properties."""
    from tests.support.openhim_double import OpenHimRouter

    to_mediator = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cht-interop")
    router = OpenHimRouter(to_mediator)
    core = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=router.app()), base_url="http://openhim-core:5001", auth=CLIENT_AUTH
    )
    async with to_mediator, core:
        await register_requester(core)
        patient = await push_patient(core)
        res = await core.post("/mediator/service-request", json=service_request_body(patient))
        bad = await core.post("/mediator/service-request", json={"resourceType": "ServiceRequest"})

    assert res.status_code == 201
    assert res.headers["content-type"].startswith("application/fhir+json")
    assert res.json()["resourceType"] == "Subscription"
    assert "/fhir/ServiceRequest/" in res.headers["location"]
    assert res.headers["x-openhim-transactionid"]
    tx = router.transactions[-2]
    assert tx["status"] == "Successful"
    assert tx["properties"]["patientId"] == patient
    assert tx["orchestrations"][-1]["name"] == "CHT interop"
    assert bad.status_code == 400
    assert bad.json()["resourceType"] == "OperationOutcome"
    assert router.transactions[-1]["status"] == "Completed"
    assert "error" not in router.transactions[-1]


async def test_unexpected_error_is_failed(client: httpx.AsyncClient, app: Any, monkeypatch: Any) -> None:
    async def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("db gone, password=hunter2")

    monkeypatch.setattr(app.state.services.ltfu.patients, "upsert", boom)
    res = await client.post("/mediator/patient", json={"resourceType": "Patient"}, headers=TX)

    assert res.status_code == 500
    doc = wrapped(res)
    assert doc["status"] == "Failed"
    assert doc["response"]["status"] == 500
    assert orjson.loads(doc["response"]["body"])["resourceType"] == "OperationOutcome"
    assert doc["error"]["message"] == "Internal server error"
    assert "hunter2" not in res.text


async def test_unreachable_fhir_server_is_failed_with_the_call_as_orchestration(
    tmp_path: Any, sqlite_template: Any, cht_server: tuple[ChtDouble, str]
) -> None:
    import shutil

    from cht_interop.app import create_app
    from tests.conftest import make_settings
    from tests.support.live import free_port

    own_db = tmp_path / "mediator.sqlite3"
    shutil.copy(sqlite_template, own_db)
    settings = make_settings(
        tmp_path / "m",
        f"sqlite:///{own_db}",
        FHIR_URL=f"http://fhir-user:fhir-secret@127.0.0.1:{free_port()}/fhir",
        CHT_URL=cht_server[1],
    )
    application = create_app(settings, run_worker=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://m", auth=CLIENT_AUTH) as client:
            res = await client.post("/mediator/endpoint", json=endpoint_body(), headers=TX)

    assert res.status_code == 502, res.text
    doc = wrapped(res)
    assert doc["status"] == "Failed"
    assert "unreachable" in doc["error"]["message"]
    (call,) = doc["orchestrations"][:1]
    assert "response" not in call and call["error"]["message"]
    assert call["request"]["port"] and call["request"]["timestamp"].endswith("Z")
    assert "fhir-secret" not in res.text


async def test_a_follow_up_through_a_core_set_up_by_openhim_configure(
    external_mediator: Any,  # noqa: F811
    cht: ChtDouble,
) -> None:
    """``openhim configure`` against the core double, then a client's follow-up routed by that
    core's own rules (channel match, the client's hashed password and role, the route): the client
    gets the mediator's answer, and core's stored transaction its orchestrations, field by field."""
    from cht_interop.openhim import channels
    from cht_interop.openhim.auth import Authenticator
    from cht_interop.openhim.configurator import apply, make_plan
    from cht_interop.openhim.management import ManagementApi
    from tests.openhim.conftest import ROOT
    from tests.support.openhim_double import OpenHimDouble, OpenHimRouter

    double = OpenHimDouble()
    settings = external_mediator.state.services.settings
    core_api = httpx.AsyncClient(transport=httpx.ASGITransport(app=double.app()))
    to_mediator = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=external_mediator), base_url="http://cht-interop"
    )
    router = OpenHimRouter(to_mediator, core=double)
    async with core_api, to_mediator:
        api = ManagementApi(Authenticator(core_api, "http://openhim-core:8080", *ROOT))
        await apply(api, await make_plan(api, CLIENT_AUTH[0], CLIENT_AUTH[1], channels.channels(settings)))
        front = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=router.app()), base_url="http://core:5001", auth=CLIENT_AUTH
        )
        async with front:
            wrong = await front.post("/mediator/patient", json={}, auth=(CLIENT_AUTH[0], "wrong"))
            unknown_route = await front.get("/elsewhere")
            await register_requester(front)
            patient = await push_patient(front)
            res = await front.post("/mediator/service-request", json=service_request_body(patient))

    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Basic"
    assert unknown_route.status_code == 404
    assert res.status_code == 201, res.text
    assert res.json()["resourceType"] == "Subscription"
    tx = router.transactions[-1]
    assert tx["request"]["headers"]["X-OpenHIM-ClientID"] == CLIENT_AUTH[0]
    assert tx["status"] == "Successful"
    assert tx["response"]["status"] == 201
    assert orjson.loads(tx["response"]["body"])["resourceType"] == "Subscription"
    assert tx["properties"]["patientId"] == patient
    assert tx["properties"]["serviceRequestId"] == res.headers["location"].rsplit("/", 1)[1]
    *calls, core_entry = tx["orchestrations"]
    assert (
        core_entry["name"] == "CHT interop" and core_entry["request"]["path"] == "/mediator/service-request"
    )
    assert calls, "the mediator's calls to the FHIR server"
    for call in calls:
        assert call["name"].startswith(call["request"]["method"])
        assert call["request"]["path"].startswith("/fhir")
        assert call["request"]["timestamp"] <= call["response"]["timestamp"]
        assert 200 <= call["response"]["status"] < 300
        assert CLIENT_AUTH[1] not in orjson.dumps(call).decode()
