"""A requester sees and cancels only its own follow-ups: another's answers 404, as a FHIR server
hides what a client may not see. An administrator sees all of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from cht_interop.app import create_app
from cht_interop.gateway.principals import Principal, Role
from cht_interop.ltfu import owners
from tests.conftest import CLIENT_AUTH, make_settings
from tests.ltfu.conftest import push_patient, register_requester, service_request_body

A = ("emr-a", "emr-a-password")
B = ("emr-b", "emr-b-password")
ROOT = ("root", "root-password-1")


@pytest.fixture
async def app(tmp_path: Path, database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(tmp_path, database_url), run_worker=False)
    async with application.router.lifespan_context(application):
        directory = application.state.services.authenticator.directory
        assert directory is not None
        for client_id, password in (A, B):
            await directory.add(client_id, frozenset({Role.REQUESTER}), password)
        await directory.add(ROOT[0], frozenset({Role.ADMIN}), ROOT[1])
        yield application


def as_client(app: FastAPI, auth: tuple[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", auth=auth)


async def test_another_requesters_follow_up_cannot_be_cancelled_or_revoked(app: FastAPI) -> None:
    async with (
        as_client(app, A) as a,
        as_client(app, B) as b,
        as_client(app, ROOT) as root,
        as_client(app, CLIENT_AUTH) as interop,
    ):
        patient_a, patient_b = await push_patient(interop), await push_patient(interop)
        await register_requester(a, "org-a")
        await register_requester(b, "org-b")
        forged = {"meta": {"tag": [{"system": owners.OWNER_SYSTEM, "code": "emr-b"}]}}
        body = service_request_body(patient_a, "org-a", **forged)
        res = await a.post("/mediator/service-request", json=body)
        assert res.status_code == 201, res.text
        sr_a = res.headers["Location"].rsplit("/", 1)[1]
        res = await b.post("/mediator/service-request", json=service_request_body(patient_b, "org-b"))
        assert res.status_code == 201, res.text
        sr_b = res.headers["Location"].rsplit("/", 1)[1]

        stored = (await a.get(f"/fhir/ServiceRequest/{sr_a}")).json()
        # the sender's, not the forged one
        assert stored["meta"]["tag"] == [{"system": owners.OWNER_SYSTEM, "code": "emr-a"}]

        for caller in (b, interop):  # interop: the reference's client, not the one that sent it
            cancel = await caller.post(f"/mediator/service-request/{sr_a}/$cancel")
            assert cancel.status_code == 404, cancel.text
            assert cancel.json()["issue"][0]["code"] == "not-found"
            assert cancel.json()["issue"][0]["diagnostics"] == f"ServiceRequest/{sr_a} is not known"
            revoked = {**stored, "status": "revoked"}
            revoke = await caller.put(f"/mediator/service-request/{sr_a}", json=revoked)
            assert revoke.status_code == 404, revoke.text
        assert (await a.get(f"/fhir/ServiceRequest/{sr_a}")).json()["status"] == "active"  # untouched

        assert (await a.post(f"/mediator/service-request/{sr_a}/$cancel")).json()["status"] == "revoked"
        assert (await root.post(f"/mediator/service-request/{sr_b}/$cancel")).json()["status"] == "revoked"


async def test_a_staged_lists_status_is_seen_by_its_sender_and_an_admin_only(app: FastAPI) -> None:
    async with as_client(app, A) as a, as_client(app, B) as b, as_client(app, ROOT) as root:
        async with as_client(app, CLIENT_AUTH) as interop:
            patient = await push_patient(interop)
        await register_requester(a, "org-a")
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"resource": service_request_body(patient, "org-a")}],
        }
        res = await a.post("/mediator/service-request", json=bundle, headers={"Prefer": "respond-async"})
        assert res.status_code == 202, res.text
        status_path = httpx.URL(res.headers["Content-Location"]).path
        assert (await a.get(status_path)).status_code in (200, 202)
        assert (await root.get(status_path)).status_code in (200, 202)
        hidden = await b.get(status_path)
        assert hidden.status_code == 404
        assert hidden.json()["issue"][0]["code"] == "not-found"


def test_a_follow_up_from_before_roles_belongs_to_the_interop_clients() -> None:
    interop = Principal("interop-client", "interop-client", frozenset({Role.INTEROP}))
    requester = Principal("emr", "emr", frozenset({Role.REQUESTER}))
    admin = Principal("root", "root", frozenset({Role.ADMIN}))
    assert owners.may_see(interop, None) and owners.may_see(admin, None)
    assert not owners.may_see(requester, None)
    assert owners.may_see(requester, "emr") and not owners.may_see(requester, "other")
