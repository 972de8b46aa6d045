"""PATCH as client libraries send it: fhirpy (sync and async) and the SMART ``fhirclient``
(JSON Patch, and FHIRPath Patch as a ``Parameters`` body).

fhirpy's own ``patch`` sends a JSON object (a merge patch) as ``application/json``; HAPI answers
that with 400 HAPI-1965 and so do we, and a developer sees it as fhirpy's ``OperationOutcome``. A
JSON Patch goes through fhirpy's ``execute`` with the JSON Patch content type set on the client;
``fhirclient`` has no PATCH API, so it goes through the client's authenticated requests session.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fhirclient import client as smart_client
from fhirclient.models.patient import Patient as SmartPatient
from fhirpy import AsyncFHIRClient, SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from tests.fhir.contract.conftest import AUTHORIZATION

JSON_PATCH = "application/json-patch+json"


def _patient(unique: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:contract:patch", "value": unique}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "gender": "female",
    }


def _diagnostics(exc: OperationOutcome) -> str:
    return str(exc.resource["issue"][0]["diagnostics"])


def test_fhirpy_sync_json_patch(fhirpy_sync: SyncFHIRClient, fhir_url: str, unique: str) -> None:
    created = fhirpy_sync.resource("Patient", **_patient(unique))
    created.save()
    patcher = SyncFHIRClient(
        fhir_url, authorization=AUTHORIZATION, extra_headers={"Content-Type": JSON_PATCH}
    )
    ops = [
        {"op": "replace", "path": "/gender", "value": "male"},
        {"op": "add", "path": "/active", "value": True},
    ]
    out = patcher.execute(f"Patient/{created.id}", method="patch", data=ops)  # type: ignore[arg-type]
    assert out["gender"] == "male" and out["active"] is True and out["meta"]["versionId"] == "2"
    again = fhirpy_sync.reference("Patient", created.id).to_resource()
    assert again["gender"] == "male" and again["name"][0]["family"] == "Doe"
    # a failing test op: the client sees the OperationOutcome, and nothing was written
    with pytest.raises(OperationOutcome) as failed:
        patcher.execute(
            f"Patient/{created.id}",
            method="patch",
            data=[{"op": "test", "path": "/gender", "value": "female"}],  # type: ignore[arg-type]
        )
    assert "HAPI-1272: JSON Patch test failed" in _diagnostics(failed.value)
    assert fhirpy_sync.reference("Patient", created.id).to_resource()["meta"]["versionId"] == "2"
    with pytest.raises(ResourceNotFound):
        patcher.execute("Patient/999999999", method="patch", data=ops)  # type: ignore[arg-type]


def test_fhirpy_own_patch_is_a_merge_patch_and_is_refused(fhirpy_sync: SyncFHIRClient, unique: str) -> None:
    created = fhirpy_sync.resource("Patient", **_patient(unique))
    created.save()
    with pytest.raises(OperationOutcome) as refused:
        created.patch(gender="male")
    assert (
        _diagnostics(refused.value) == "HAPI-1965: Invalid Content-Type for PATCH operation: application/json"
    )
    with pytest.raises(OperationOutcome):
        fhirpy_sync.patch("Patient", created.id, gender="male")
    assert fhirpy_sync.reference("Patient", created.id).to_resource()["gender"] == "female"


async def test_fhirpy_async_conditional_json_patch(
    fhirpy_async: AsyncFHIRClient, fhir_url: str, unique: str
) -> None:
    created = fhirpy_async.resource("Patient", **_patient(unique))
    await created.save()
    patcher = AsyncFHIRClient(
        fhir_url, authorization=AUTHORIZATION, extra_headers={"Content-Type": JSON_PATCH}
    )
    ops = [{"op": "replace", "path": "/name/0/family", "value": "Smith"}]
    out = await patcher.execute(
        "Patient",
        method="patch",
        data=ops,  # type: ignore[arg-type]
        params={"identifier": f"urn:contract:patch|{unique}"},
    )
    assert out["id"] == created.id and out["name"][0]["family"] == "Smith"
    found = (
        await fhirpy_async.resources("Patient").search(identifier=f"urn:contract:patch|{unique}").fetch_all()
    )
    assert [p["name"][0]["family"] for p in found] == ["Smith"]
    with pytest.raises(ResourceNotFound):
        await patcher.execute(
            "Patient",
            method="patch",
            data=ops,  # type: ignore[arg-type]
            params={"identifier": f"urn:contract:patch|{unique}-none"},
        )


def test_smart_client_raw_json_patch_and_transaction(smart: smart_client.FHIRClient, unique: str) -> None:
    server = smart.server
    created = SmartPatient(_patient(unique))
    pid = created.create(server)["id"]
    r = server.session.patch(
        f"{server.base_uri}Patient/{pid}",
        data=json.dumps([{"op": "replace", "path": "/gender", "value": "other"}]),
        headers={"Content-Type": JSON_PATCH, "Accept": "application/fhir+json", "If-Match": 'W/"1"'},
    )
    assert r.status_code == 200 and r.headers["ETag"] == 'W/"2"'
    assert SmartPatient.read(pid, server).gender == "other"
    # the same If-Match again is stale now: 409, as HAPI answers
    r = server.session.patch(
        f"{server.base_uri}Patient/{pid}",
        data=json.dumps([{"op": "replace", "path": "/gender", "value": "male"}]),
        headers={"Content-Type": JSON_PATCH, "If-Match": 'W/"1"'},
    )
    assert r.status_code == 409 and "HAPI-0974" in r.json()["issue"][0]["diagnostics"]
    # a PATCH entry in a transaction: a Binary carrying the JSON Patch
    patch_doc = json.dumps([{"op": "add", "path": "/birthDate", "value": "2000-02-29"}]).encode()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": JSON_PATCH,
                    "data": base64.b64encode(patch_doc).decode(),
                },
                "request": {"method": "PATCH", "url": f"Patient/{pid}"},
            }
        ],
    }
    answer = server.post_json("", bundle).json()
    assert answer["type"] == "transaction-response"
    assert answer["entry"][0]["response"]["status"] == "200 OK"
    assert answer["entry"][0]["response"]["location"] == f"Patient/{pid}/_history/3"
    again = SmartPatient.read(pid, server)
    assert again.birthDate.isostring == "2000-02-29" and again.gender == "other"


def test_smart_client_fhirpath_patch(smart: smart_client.FHIRClient, unique: str) -> None:
    server = smart.server
    pid = SmartPatient(_patient(unique)).create(server)["id"]
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "add"},
                    {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "birthDate"},
                    {"name": "value", "valueDate": "1999-12-31"},
                ],
            }
        ],
    }
    r = server.session.patch(
        f"{server.base_uri}Patient/{pid}",
        data=json.dumps(parameters),
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
    )
    assert r.status_code == 200 and r.headers["ETag"] == 'W/"2"'
    patched = SmartPatient.read(pid, server)
    assert patched.birthDate.isostring == "1999-12-31" and patched.gender == "female"
