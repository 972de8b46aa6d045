"""The store beneath the REST layer: options, concurrency guards, the client factory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from cht_interop.db import Database
from cht_interop.fhir.errors import InvalidRequest
from cht_interop.fhir.factory import build_fhir_client
from cht_interop.fhir.http_client import HttpFhirClient
from cht_interop.fhir.inprocess import InProcessFhirClient
from cht_interop.fhir.store import FhirStore
from tests.conftest import make_settings
from tests.fhir.conftest import patient


async def test_external_references_can_be_refused(db: Database) -> None:
    strict = FhirStore(db, allow_external_references=False)
    with pytest.raises(InvalidRequest, match="HAPI-0507"):
        await strict.create(
            patient("x", managingOrganization={"reference": "http://other.example/fhir/Organization/1"})
        )
    # references into our own base are local, whatever the setting
    org = await strict.create({"resourceType": "Organization", "name": "own"})
    own = f"http://localhost/fhir/Organization/{org.stored.id}"
    out = await strict.create(patient("y", managingOrganization={"reference": own}))
    assert out.resource["managingOrganization"]["reference"] == f"Organization/{org.stored.id}"


async def test_concurrent_conditional_creates_make_one_resource(db: Database) -> None:
    store = FhirStore(db)
    results = await asyncio.gather(
        *(store.create(patient("race"), if_none_exist="identifier=cht|race") for _ in range(6))
    )
    assert sum(r.created for r in results) == 1
    assert len({r.stored.id for r in results}) == 1
    assert (await store.search("Patient", [("identifier", "race")]))["total"] == 1


async def test_concurrent_updates_keep_every_version(db: Database) -> None:
    store = FhirStore(db)
    created = await store.create(patient("upd"))
    rid = created.stored.id

    async def bump(n: int) -> None:
        await store.update("Patient", rid, {**patient("upd"), "id": rid, "birthDate": f"19{n:02d}-01-01"})

    await asyncio.gather(*(bump(n) for n in range(5)))
    history = await store.history("Patient", rid)
    assert sorted(int(e["resource"]["meta"]["versionId"]) for e in history["entry"]) == [1, 2, 3, 4, 5, 6]


async def test_factory_picks_the_client(tmp_path: Path, sqlite_url: str) -> None:
    db = Database(sqlite_url)
    async with httpx.AsyncClient() as http:
        embedded = build_fhir_client(make_settings(tmp_path, sqlite_url), db, http)
        assert isinstance(embedded, InProcessFhirClient) and isinstance(embedded.store, FhirStore)
        remote = build_fhir_client(
            make_settings(
                tmp_path, sqlite_url, FHIR_URL="http://hapi:8080/fhir/", FHIR_USERNAME="u", FHIR_PASSWORD="p"
            ),
            db,
            http,
        )
        assert isinstance(remote, HttpFhirClient)
        assert remote.base_url == "http://hapi:8080/fhir"
        request = httpx.Request("GET", "http://hapi:8080/fhir/Patient")
        assert remote.auth is not None
        signed = next(remote.auth.auth_flow(request))
        assert signed.headers["authorization"] == "Basic dTpw"
    await db.dispose()


async def test_concurrent_update_as_create_of_one_client_id(db: Database) -> None:
    from cht_interop.fhir.errors import VersionConflict

    store = FhirStore(db)

    async def put() -> object:
        try:
            return await store.update("Patient", "same-id", {**patient("same"), "id": "same-id"})
        except VersionConflict as exc:
            return exc

    results = await asyncio.gather(*(put() for _ in range(4)))
    outcomes = [r for r in results if not isinstance(r, VersionConflict)]
    assert sum(getattr(r, "created", False) for r in outcomes) == 1
    assert (await store.read("Patient", "same-id")).version_id == 1


async def test_trusted_entries_skip_only_their_own_schema_check(db: Database) -> None:
    """``trusted`` covers the entries our own code built; a client's resource beside them is still
    validated, and a trusted entry must still name a known type matching its request url."""
    client = InProcessFhirClient(FhirStore(db))
    org = (await client.create({"resourceType": "Organization", "name": "o"})).resource

    def bundle(sr_status: str) -> dict[str, object]:
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:sr",
                    "resource": {
                        "resourceType": "ServiceRequest",
                        "status": sr_status,
                        "intent": "order",
                        "subject": {"reference": f"Organization/{org['id']}"},
                    },
                    "request": {"method": "POST", "url": "ServiceRequest"},
                },
                {
                    "fullUrl": "urn:uuid:task",
                    "resource": {
                        "resourceType": "Task",
                        "status": "requested",
                        "intent": "order",
                        "basedOn": [{"reference": "urn:uuid:sr"}],
                    },
                    "request": {"method": "POST", "url": "Task"},
                },
            ],
        }

    # the client's ServiceRequest (not trusted) with an invalid code is refused, nothing written
    with pytest.raises(InvalidRequest, match="status"):
        await client.transaction(bundle("no-such-status"), trusted={"urn:uuid:task"}, handover=True)
    assert await client.search_all("Task") == []
    # trusting an entry does not let its resource go under another type
    wrong = bundle("active")
    wrong["entry"][1]["request"]["url"] = "Patient"  # type: ignore[index]
    with pytest.raises(InvalidRequest, match="resourceType"):
        await client.transaction(wrong, trusted={"urn:uuid:task"})
    # references in trusted entries are still resolved and checked
    dangling = bundle("active")
    dangling["entry"][1]["resource"]["for"] = {"reference": "Patient/nobody"}  # type: ignore[index]
    with pytest.raises(InvalidRequest, match="Patient/nobody"):
        await client.transaction(dangling, trusted={"urn:uuid:task"})
    out = await client.transaction(bundle("active"), trusted={"urn:uuid:task"}, handover=True)
    task_id = out["entry"][1]["response"]["location"].split("/")[1]
    task = await client.read("Task", task_id)
    sr_id = out["entry"][0]["response"]["location"].split("/")[1]
    assert task["basedOn"] == [{"reference": f"ServiceRequest/{sr_id}"}]


async def _post_patients(store: FhirStore, prefix: str, count: int) -> None:
    """``count`` Patients in one transaction Bundle."""
    entries = [
        {"resource": patient(f"{prefix}-{i}"), "request": {"method": "POST", "url": "Patient"}}
        for i in range(count)
    ]
    await store.process_bundle({"resourceType": "Bundle", "type": "transaction", "entry": entries})


async def _planner_row_counts(store: FhirStore, db: Database) -> dict[str, float] | None:
    """The planner's row counts once the background ANALYZE the last write started has run; None
    if that write started none."""
    from sqlalchemy import text

    if store.analyzing is None:
        return None
    await store.analyzing
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT relname, reltuples FROM pg_class "
                "WHERE relname IN ('fhir_resource', 'fhir_token', 'fhir_string')"
            )
        )
        return {name: count for name, count in rows.all()}


@pytest.mark.parametrize("load", ["one transaction", "small transactions"])
async def test_bulk_writes_refresh_planner_statistics(db: Database, load: str) -> None:
    """PostgreSQL: once thousands of resources are written, in one transaction or in a load of
    small ones (500-entry Bundles, then a single create), the planner's row counts are refreshed
    at once (stale ones made look-ups scan for tens of seconds); the next refresh waits until as
    many again are written. SQLite has nothing to do."""
    from cht_interop.fhir.store import ANALYZE_AFTER

    store = FhirStore(db)
    if load == "one transaction":
        await _post_patients(store, "bulk", ANALYZE_AFTER)
    else:
        for start in range(0, ANALYZE_AFTER - 1, 500):
            await _post_patients(store, f"load-{start}", min(500, ANALYZE_AFTER - 1 - start))
        assert store.analyzing is None  # 1,999 written: not yet
        await store.create(patient("the-2000th"))
    counts = await _planner_row_counts(store, db)
    if not db.is_postgresql:
        assert counts is None
        return
    assert counts is not None
    assert counts["fhir_resource"] == ANALYZE_AFTER
    assert counts["fhir_token"] >= ANALYZE_AFTER  # identifier + gender per Patient
    assert counts["fhir_string"] >= ANALYZE_AFTER
    # a small write does not start another one
    store.analyzing = None
    await store.create(patient("one-more"))
    assert store.analyzing is None


async def test_trusted_put_entries_still_checked_for_type(db: Database) -> None:
    """A trusted PUT (our own Task, one step further) skips the schema check only: the type must
    match the url, and an untrusted PUT beside it is validated as before."""
    client = InProcessFhirClient(FhirStore(db))
    task = (await client.create({"resourceType": "Task", "status": "requested", "intent": "order"})).resource

    def put(resource: dict[str, object], url: str) -> dict[str, object]:
        return {"fullUrl": url, "resource": resource, "request": {"method": "PUT", "url": url}}

    url = f"Task/{task['id']}"
    wrong_type = {**task, "resourceType": "Patient"}
    with pytest.raises(InvalidRequest, match="resourceType"):
        await client.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": [put(wrong_type, url)]},
            trusted={url},
        )
    bad = {**task, "status": "not-a-status"}
    with pytest.raises(InvalidRequest, match="status"):
        await client.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": [put(bad, url)]},
            trusted={"Task/other"},
        )
    accepted = {**task, "status": "accepted"}
    await client.transaction(
        {"resourceType": "Bundle", "type": "transaction", "entry": [put(accepted, url)]}, trusted={url}
    )
    assert (await client.read("Task", task["id"]))["status"] == "accepted"


async def test_reads_arriving_together_each_get_their_own_answer_from_one_connection(db: Database) -> None:
    """A worker's batch of callbacks reads its Subscriptions and resources at once: every caller
    gets its own resource, 404 or 410 (with its ETag), and the lot is answered on one connection
    after the first, not one connection per read."""
    from sqlalchemy import event

    from cht_interop.fhir.errors import ResourceGone, ResourceNotFound

    store = FhirStore(db)
    patients = [(await store.create(patient(f"r{n}"))).stored.id for n in range(40)]
    org = (await store.create({"resourceType": "Organization", "name": "o"})).stored.id
    await store.delete("Patient", patients[0])
    checkouts: list[object] = []

    def checked_out(*_: object) -> None:
        checkouts.append(object())

    refs = [("Patient", pid) for pid in patients] + [("Organization", org), ("Patient", "no-such")]
    event.listen(db.engine.sync_engine.pool, "checkout", checked_out)
    try:
        answers = await asyncio.gather(
            *(store.read(rtype, rid) for rtype, rid in refs), return_exceptions=True
        )
    finally:
        event.remove(db.engine.sync_engine.pool, "checkout", checked_out)
    gone, *live, organisation, unknown = answers
    assert isinstance(gone, ResourceGone) and gone.headers == {"ETag": 'W/"2"'}
    assert [a.resource["id"] for a in live if not isinstance(a, BaseException)] == patients[1:]
    assert [a.resource["identifier"][0]["value"] for a in live] == [f"r{n}" for n in range(1, 40)]  # type: ignore[union-attr]
    assert not isinstance(organisation, BaseException) and organisation.resource["name"] == "o"
    assert isinstance(unknown, ResourceNotFound)
    assert len(checkouts) <= 2  # the first read alone, then everyone who arrived meanwhile
