"""What already works, as the FHIR client libraries requesting systems use see it: CRUD, search with
``_include`` / ``_revinclude``, paging by next links, conditional create / update / delete,
transactions, the CapabilityStatement, and ``$validate``, ``_summary``, ``_total``; through fhirpy
(sync and async) and the SMART ``fhirclient``, each through its own API where it has one.
"""

from __future__ import annotations

from typing import Any

import pytest
from fhirclient import client as smart_client
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.patient import Patient
from fhirpy import AsyncFHIRClient, SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound

from tests.fhir.contract.conftest import AUTHORIZATION
from tests.fhir.contract.samples import SYSTEM, identifier

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


def _patient(tag: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": tag}],
        "name": [{"family": f"Fam-{tag}", "given": ["Ann"]}],
        **extra,
    }


# ---- CRUD -----------------------------------------------------------------------------------------


def test_crud_fhirpy_sync(fhirpy_sync: SyncFHIRClient, unique: str) -> None:
    p = fhirpy_sync.resource("Patient", **{k: v for k, v in _patient(unique).items() if k != "resourceType"})
    p.save()
    assert p.id and p["meta"]["versionId"] == "1"
    read = fhirpy_sync.reference("Patient", p.id).to_resource()
    assert read["name"][0]["family"] == f"Fam-{unique}"
    read["gender"] = "female"
    read.save()
    assert read["meta"]["versionId"] == "2"
    assert fhirpy_sync.reference("Patient", p.id).to_resource()["gender"] == "female"
    read.delete()
    with pytest.raises(ResourceNotFound):  # 410 Gone, which fhirpy reports as not found
        fhirpy_sync.reference("Patient", p.id).to_resource()


async def test_crud_fhirpy_async(fhirpy_async: AsyncFHIRClient, unique: str) -> None:
    p = fhirpy_async.resource("Patient", **{k: v for k, v in _patient(unique).items() if k != "resourceType"})
    await p.save()
    assert p.id
    read = await fhirpy_async.reference("Patient", p.id).to_resource()
    read["birthDate"] = "2001-02-03"
    await read.save()
    again = await fhirpy_async.reference("Patient", p.id).to_resource()
    assert again["birthDate"] == "2001-02-03" and again["meta"]["versionId"] == "2"
    await again.delete()
    with pytest.raises(ResourceNotFound):
        await fhirpy_async.reference("Patient", p.id).to_resource()


def test_crud_fhirclient(smart: smart_client.FHIRClient, unique: str) -> None:
    created = Patient(_patient(unique)).create(smart.server)
    assert created is not None and created["resourceType"] == "Patient"
    pid = created["id"]
    p = Patient.read(pid, smart.server)
    assert p.name[0].family == f"Fam-{unique}"
    p.gender = "male"
    p.update(smart.server)
    assert Patient.read(pid, smart.server).gender == "male"
    p.delete(smart.server)
    with pytest.raises(Exception) as err:  # requests' HTTPError: 410 Gone
        Patient.read(pid, smart.server)
    assert getattr(err.value, "response", None) is not None and err.value.response.status_code == 410


# ---- search: _include / _revinclude, paging -------------------------------------------------------


def _linked(client: SyncFHIRClient, tag: str) -> tuple[str, str, str]:
    org = client.resource("Organization", name=f"Org {tag}", identifier=[{"system": SYSTEM, "value": tag}])
    org.save()
    pat = client.resource(
        "Patient", identifier=[{"system": SYSTEM, "value": tag}], managingOrganization=org.to_reference()
    )
    pat.save()
    enc = client.resource(
        "Encounter", status="finished", **{"class": {"code": "AMB"}}, subject=pat.to_reference()
    )
    enc.save()
    return str(org.id), str(pat.id), str(enc.id)


def test_include_and_revinclude_fhirpy(fhirpy_sync: SyncFHIRClient, unique: str) -> None:
    org, pat, enc = _linked(fhirpy_sync, unique)
    patients = fhirpy_sync.resources("Patient").search(identifier=identifier(unique))
    bundle = patients.include("Patient", "organization").revinclude("Encounter", "subject").fetch_raw()
    modes = {(e["resource"]["resourceType"], e["resource"]["id"]): e["search"]["mode"] for e in bundle.entry}
    assert modes == {
        ("Patient", pat): "match",
        ("Organization", org): "include",
        ("Encounter", enc): "include",
    }
    # fhirpy's fetch() keeps the matches only
    assert [p.id for p in patients.include("Patient", "organization").fetch()] == [pat]


async def test_paging_by_next_links_fhirpy_async(fhirpy_async: AsyncFHIRClient, unique: str) -> None:
    made = []
    for _ in range(5):
        p = fhirpy_async.resource("Patient", identifier=[{"system": SYSTEM, "value": unique}], gender="other")
        await p.save()
        made.append(p.id)
    search = fhirpy_async.resources("Patient").search(identifier=identifier(unique)).limit(2)
    first = await search.fetch_raw()
    assert first.total == 5 and len(first.entry) == 2
    assert any(link["relation"] == "next" for link in first.link)
    assert sorted([p.id for p in await search.fetch_all()]) == sorted(made)  # follows next links


def test_paging_by_next_links(
    fhirpy_sync: SyncFHIRClient, smart: smart_client.FHIRClient, unique: str
) -> None:
    made = [Patient(_patient(unique)).create(smart.server)["id"] for _ in range(5)]
    ids = [p.id for p in fhirpy_sync.resources("Patient").search(identifier=identifier(unique)).limit(2)]
    assert sorted(ids) == sorted(made)
    search = Patient.where(struct={"identifier": identifier(unique), "_count": "2"})
    pages = list(search.perform_iter(smart.server))
    assert len(pages) == 3 and sorted(r.id for b in pages for r in [e.resource for e in b.entry]) == sorted(
        made
    )


# ---- conditional create / update / delete ---------------------------------------------------------


def test_conditional_create_update_delete_fhirpy(
    fhir_url: str, fhirpy_sync: SyncFHIRClient, unique: str
) -> None:
    match = f"identifier={identifier(unique)}"
    # conditional create: the If-None-Exist header, set on a fhirpy client (its extra_headers)
    guarded = SyncFHIRClient(fhir_url, authorization=AUTHORIZATION, extra_headers={"If-None-Exist": match})
    first = guarded.resource("Patient", identifier=[{"system": SYSTEM, "value": unique}])
    first.save()
    second = guarded.resource("Patient", identifier=[{"system": SYSTEM, "value": unique}])
    second.save()
    assert second.id == first.id
    # conditional update: PUT Patient?identifier=…, fhirpy's SearchSet.update
    search = fhirpy_sync.resources("Patient").search(identifier=identifier(unique))
    updated, created = search.update(fhirpy_sync.resource("Patient", **_patient(unique, gender="female")))
    assert not created and updated.id == first.id and updated["gender"] == "female"
    # several matches: 412 (fhirpy's MultipleResourcesFound)
    fhirpy_sync.resource("Patient", identifier=[{"system": SYSTEM, "value": unique}]).save()
    with pytest.raises(MultipleResourcesFound):
        search.update(fhirpy_sync.resource("Patient", **_patient(unique)))
    with pytest.raises(MultipleResourcesFound):
        search.delete()
    fhirpy_sync.reference("Patient", first.id).to_resource().delete()
    # conditional delete: DELETE Patient?identifier=…, one match left
    search.delete()
    assert search.fetch() == []


# ---- transactions ---------------------------------------------------------------------------------


def test_transaction_fhirpy_and_fhirclient(
    fhirpy_sync: SyncFHIRClient, smart: smart_client.FHIRClient, unique: str
) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:p1",
                "resource": _patient(unique),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Encounter",
                    "status": "planned",
                    "class": {"code": "AMB"},
                    "subject": {"reference": "urn:uuid:p1"},
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
        ],
    }
    out = fhirpy_sync.execute("", method="post", data=bundle)
    assert out["type"] == "transaction-response"
    pid = out["entry"][0]["response"]["location"].split("/")[1]
    enc = fhirpy_sync.resources("Encounter").search(subject=f"Patient/{pid}").fetch()
    assert len(enc) == 1  # the urn:uuid reference was rewritten to the created Patient
    res = smart.server.post_json("", {**bundle, "type": "batch"})
    assert res.status_code == 200 and res.json()["type"] == "batch-response"


# ---- CapabilityStatement --------------------------------------------------------------------------


def test_capability_statement_through_both_libraries(
    fhirpy_sync: SyncFHIRClient, smart: smart_client.FHIRClient
) -> None:
    raw = fhirpy_sync.execute("metadata", method="get")
    assert raw["resourceType"] == "CapabilityStatement" and raw["fhirVersion"] == "4.0.1"
    cs = smart.server.capabilityStatement
    assert isinstance(cs, CapabilityStatement)
    patient = next(r for r in cs.rest[0].resource if r.type == "Patient")
    assert {"read", "create", "search-type"} <= {i.code for i in patient.interaction}
    assert [op.name for op in patient.operation] == ["validate"]


# ---- $validate, _summary, _total ------------------------------------------------------------------


def test_validate_through_fhirpy_and_fhirclient(
    fhirpy_sync: SyncFHIRClient, smart: smart_client.FHIRClient, unique: str
) -> None:
    ok = fhirpy_sync.execute("Patient/$validate", method="post", data=_patient(unique))
    assert ok["issue"][0]["diagnostics"] == "No issues detected during validation"
    with pytest.raises(MultipleResourcesFound) as err:  # fhirpy's name for any 412
        fhirpy_sync.execute("Patient/$validate", method="post", data=_patient(unique, gender="robot"))
    assert "Patient.gender" in str(err.value)
    res = smart.server.post_json("Patient/$validate", _patient(unique))
    assert res.status_code == 200
    assert fhirpy_sync.resources("Patient").search(identifier=identifier(unique)).fetch() == []


async def test_validate_async_operation_outcome(fhirpy_async: AsyncFHIRClient, unique: str) -> None:
    params = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]}
    with pytest.raises(OperationOutcome):  # 400 HAPI-0991: mode delete needs an id
        await fhirpy_async.execute("Patient/$validate", method="post", data=params)


def test_summary_and_total_through_fhirpy(
    fhirpy_sync: SyncFHIRClient, smart: smart_client.FHIRClient, unique: str
) -> None:
    for _ in range(3):
        Patient(_patient(unique, maritalStatus={"text": "single"})).create(smart.server)
    search = fhirpy_sync.resources("Patient").search(identifier=identifier(unique))
    counted = search.search(_summary="count").fetch_raw()
    assert counted.total == 3 and "entry" not in counted
    summary = search.search(_summary="true").fetch()
    assert len(summary) == 3 and all(
        "maritalStatus" not in p and SUBSETTED in p["meta"]["tag"] for p in summary
    )
    none = search.search(_total="none").fetch_raw()
    assert "total" not in none and len(none.entry) == 3
    assert search.search(_total="accurate").limit(1).fetch_raw().total == 3
    with pytest.raises(OperationOutcome):
        search.search(_total="sometimes").fetch()
    data = Patient.where(struct={"identifier": identifier(unique), "_summary": "data"})
    bundle = next(iter(data.perform_iter(smart.server)))
    assert bundle.total == 3
    assert all(SUBSETTED["code"] in [t.code for t in e.resource.meta.tag] for e in bundle.entry)
