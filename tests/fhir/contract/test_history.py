"""History and conditional read as FHIR client libraries use them: fhirpy (sync and async) reading
a resource's versions and refreshing with ``If-None-Match``; the SMART ``fhirclient`` following
``next`` links page by page and parsing every page with its ``Bundle`` model."""

from __future__ import annotations

from typing import Any

from fhirclient import client as smart_client
from fhirclient.models.bundle import Bundle
from fhirpy import AsyncFHIRClient, SyncFHIRClient


def _patient(unique: str) -> dict[str, Any]:
    return {
        "identifier": [{"system": "urn:contract-history", "value": unique}],
        "name": [{"family": f"Hist-{unique}"}],
        "gender": "female",
    }


def test_fhirpy_reads_a_resources_history(fhirpy_sync: SyncFHIRClient, unique: str) -> None:
    pat = fhirpy_sync.resource("Patient", **_patient(unique))
    pat.save()
    pat["gender"] = "male"
    pat.save()

    history = pat.execute("_history", method="get")
    assert history["resourceType"] == "Bundle" and history["type"] == "history"
    assert history["total"] == 2
    versions = [e["resource"]["meta"]["versionId"] for e in history["entry"]]
    assert versions == ["2", "1"]
    assert history["entry"][1]["resource"]["gender"] == "female"

    typed = fhirpy_sync.execute("Patient/_history", method="get", params={"_count": "500"})
    mine = [e for e in typed["entry"] if e["fullUrl"].endswith(f"/Patient/{pat.id}")]
    assert [e["request"]["method"] for e in mine] == ["PUT", "POST"]


def test_fhirpy_refresh_keeps_a_current_copy_and_fetches_a_stale_one(
    fhirpy_sync: SyncFHIRClient, unique: str
) -> None:
    mine = fhirpy_sync.resource("Patient", **_patient(unique))
    mine.save()
    mine["gender"] = "unknown"  # an unsaved local edit: only a 304 leaves it in place
    mine.refresh()  # If-None-Match: 1 → 304 Not Modified, fhirpy keeps its copy as it is
    assert mine["meta"]["versionId"] == "1" and mine["gender"] == "unknown"

    theirs = fhirpy_sync.reference("Patient", mine.id).to_resource()
    theirs["gender"] = "other"
    theirs.save()
    mine.refresh()  # If-None-Match: 1, the server has 2 → 200 with the new version
    assert mine["meta"]["versionId"] == "2" and mine["gender"] == "other"


async def test_fhirpy_async_history_with_a_delete(fhirpy_async: AsyncFHIRClient, unique: str) -> None:
    pat = fhirpy_async.resource("Patient", **_patient(unique))
    await pat.save()
    pid = pat.id
    await pat.delete()
    history = await fhirpy_async.execute(f"Patient/{pid}/_history", method="get")
    deleted, created = history["entry"]
    assert deleted["request"]["method"] == "DELETE" and "resource" not in deleted
    assert created["request"]["method"] == "POST" and created["resource"]["id"] == pid


def test_fhirclient_follows_next_links_to_the_end(smart: smart_client.FHIRClient, unique: str) -> None:
    created = smart.server.post_json("Patient", {"resourceType": "Patient", **_patient(unique)}).json()
    pid = created["id"]
    for gender in ("male", "other", "unknown"):
        smart.server.put_json(
            f"Patient/{pid}", {"resourceType": "Patient", "id": pid, **_patient(unique), "gender": gender}
        )

    seen: list[str] = []
    path: str | None = f"Patient/{pid}/_history?_count=1"
    while path is not None:
        page = Bundle(smart.server.request_json(path))  # the library's model accepts every page
        assert page.type == "history" and page.total == 4 and len(page.entry) == 1
        seen.append(page.entry[0].resource.meta.versionId)
        path = next((link.url for link in page.link if link.relation == "next"), None)
    assert seen == ["4", "3", "2", "1"]
