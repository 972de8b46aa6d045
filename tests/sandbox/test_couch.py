"""``/medic/*`` as CouchDB answers through the CHT API (cht-core api/src/middleware/authorization.js)."""

from __future__ import annotations

from tests.sandbox.conftest import ADMIN_AUTH, JSON, POST_JSON, Running
from tests.sandbox.helpers import build_world

ADMIN_JSON = {**POST_JSON, **ADMIN_AUTH}


async def test_put_get_and_conflict(sandbox: Running) -> None:
    c = sandbox.client
    r = await c.put("/medic/doc-1", json={"type": "thing", "n": 1}, headers=ADMIN_JSON)
    assert r.status_code == 201
    first = r.json()
    assert first["ok"] is True and first["id"] == "doc-1" and first["rev"].startswith("1-")
    r = await c.put("/medic/doc-1", json={"type": "thing", "n": 2}, headers=ADMIN_JSON)
    assert r.status_code == 409
    assert r.json() == {"error": "conflict", "reason": "Document update conflict."}
    r = await c.put("/medic/doc-1", json={"_rev": first["rev"], "type": "thing", "n": 2}, headers=ADMIN_JSON)
    assert r.status_code == 201 and r.json()["rev"].startswith("2-")
    doc = (await c.get("/medic/doc-1", headers={**JSON, **ADMIN_AUTH})).json()
    assert doc == {"_id": "doc-1", "_rev": r.json()["rev"], "type": "thing", "n": 2}
    r = await c.get("/medic/nope", headers={**JSON, **ADMIN_AUTH})
    assert r.status_code == 404 and r.json() == {"error": "not_found", "reason": "missing"}
    r = await c.delete(f"/medic/doc-1?rev={doc['_rev']}", headers={**JSON, **ADMIN_AUTH})
    assert r.status_code == 200
    r = await c.get("/medic/doc-1", headers={**JSON, **ADMIN_AUTH})
    assert r.status_code == 404 and r.json() == {"error": "not_found", "reason": "deleted"}


async def test_bulk_docs_results_in_order_with_per_doc_conflicts(sandbox: Running) -> None:
    c = sandbox.client
    await c.put("/medic/exists", json={"a": 1}, headers=ADMIN_JSON)
    r = await c.post(
        "/medic/_bulk_docs",
        json={"docs": [{"_id": "new-1", "a": 1}, {"_id": "exists", "a": 2}, {"b": 3}]},
        headers=ADMIN_JSON,
    )
    assert r.status_code == 201
    results = r.json()
    assert results[0]["ok"] is True and results[0]["id"] == "new-1"
    assert results[1] == {"id": "exists", "error": "conflict", "reason": "Document update conflict."}
    assert results[2]["ok"] is True and len(results[2]["id"]) == 32


async def test_bulk_docs_new_edits_false_keeps_revisions_and_answers_201(sandbox: Running) -> None:
    c = sandbox.client
    r = await c.post(
        "/medic/_bulk_docs",
        json={"docs": [{"_id": "rep-1", "_rev": "3-abc", "x": 1}], "new_edits": False},
        headers=ADMIN_JSON,
    )
    assert r.status_code == 201 and r.json() == []
    doc = (await c.get("/medic/rep-1", headers={**JSON, **ADMIN_AUTH})).json()
    assert doc["_rev"] == "3-abc"
    # a lower revision loses, as in CouchDB
    await c.post(
        "/medic/_bulk_docs",
        json={"docs": [{"_id": "rep-1", "_rev": "2-zzz", "x": 0}], "new_edits": False},
        headers=ADMIN_JSON,
    )
    doc = (await c.get("/medic/rep-1", headers={**JSON, **ADMIN_AUTH})).json()
    assert doc["_rev"] == "3-abc" and doc["x"] == 1


async def test_bulk_docs_bad_bodies(sandbox: Running) -> None:
    c = sandbox.client
    r = await c.post("/medic/_bulk_docs", json={"nodocs": []}, headers=ADMIN_JSON)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    r = await c.post("/medic/_bulk_docs", json={"docs": {}}, headers=ADMIN_JSON)
    assert r.status_code == 400 and r.json() == {
        "error": "bad_request",
        "reason": "`docs` parameter must be an array.",
    }
    r = await c.post("/medic/_bulk_docs", content=b"{", headers=ADMIN_JSON)
    assert r.status_code == 400 and r.json() == {"error": "bad_request", "reason": "invalid UTF-8 JSON"}


async def test_offline_chw_bulk_docs_forbidden_stubs_for_docs_outside_scope(sandbox: Running) -> None:
    c = sandbox.client
    world = await build_world(c)
    other_district = (
        await c.post("/api/v1/places", json={"name": "Far", "type": "district_hospital"}, headers=ADMIN_JSON)
    ).json()["id"]
    report_in = {
        "_id": "r-in",
        "type": "data_record",
        "form": "interop_follow_up",
        "fields": {"patient_id": world.patient},
        "reported_date": 1,
    }
    report_out = {
        "_id": "r-out",
        "type": "data_record",
        "form": "x",
        "fields": {"patient_id": other_district},
        "reported_date": 1,
    }
    r = await c.post(
        "/medic/_bulk_docs", json={"docs": [report_out, report_in]}, headers={**POST_JSON, **world.chw_auth}
    )
    assert r.status_code == 201
    results = r.json()
    assert results[0] == {"id": "r-out", "error": "forbidden"}
    assert results[1]["ok"] is True and results[1]["id"] == "r-in"
    assert (await c.get("/medic/r-out", headers={**JSON, **ADMIN_AUTH})).status_code == 404


async def test_offline_chw_reads_only_its_scope(sandbox: Running) -> None:
    c = sandbox.client
    world = await build_world(c)
    far = (await c.post("/api/v1/people", json={"name": "Far away"}, headers=ADMIN_JSON)).json()["id"]
    r = await c.get(f"/medic/{world.patient}", headers={**JSON, **world.chw_auth})
    assert r.status_code == 200
    r = await c.get(f"/medic/{far}", headers={**JSON, **world.chw_auth})
    assert r.status_code == 403 and r.json() == {"error": "forbidden", "reason": "Insufficient privileges"}
    r = await c.get("/medic/_all_docs", headers={**JSON, **world.chw_auth})
    ids = {row["id"] for row in r.json()["rows"]}
    assert world.patient in ids and world.clinic in ids and far not in ids and world.district not in ids


async def test_find_is_firewalled_for_offline_users(sandbox: Running) -> None:
    world = await build_world(sandbox.client)
    r = await sandbox.client.post(
        "/medic/_find", json={"selector": {}}, headers={**POST_JSON, **world.chw_auth}
    )
    assert r.status_code == 403
    assert r.json() == {
        "code": 403,
        "error": "forbidden",
        "details": "Offline users are not allowed access to this endpoint",
    }
    r = await sandbox.client.get(
        "/medic/_design/medic-client/_view/contacts", headers={**JSON, **world.chw_auth}
    )
    assert r.status_code == 403


async def test_find_selectors(sandbox: Running) -> None:
    c = sandbox.client
    docs = [
        {"_id": "a", "type": "person", "role": "patient", "fields": {"k": 1}},
        {"_id": "b", "type": "person", "role": "chw"},
        {"_id": "c", "type": "data_record", "form": "interop_follow_up", "fields": {"k": 2}},
    ]
    await c.post("/medic/_bulk_docs", json={"docs": docs}, headers=ADMIN_JSON)

    async def ids(selector: dict, **extra: object) -> list[str]:
        r = await c.post("/medic/_find", json={"selector": selector, **extra}, headers=ADMIN_JSON)
        assert r.status_code == 200, r.text
        return [d.get("_id") for d in r.json()["docs"]]

    assert await ids({"type": "person"}) == ["a", "b"]
    assert await ids({"type": "person", "role": "chw"}) == ["b"]
    assert await ids({"role": {"$in": ["patient", "nurse"]}}) == ["a"]
    assert await ids({"fields.k": {"$exists": True}}) == ["a", "c"]
    assert await ids({"fields": {"$exists": False}, "type": {"$eq": "person"}}) == ["b"]
    assert await ids({"fields.k": 2}) == ["c"]
    r = await c.post(
        "/medic/_find", json={"selector": {"type": "person"}, "fields": ["_id", "role"]}, headers=ADMIN_JSON
    )
    assert r.json()["docs"] == [{"_id": "a", "role": "patient"}, {"_id": "b", "role": "chw"}]
    r = await c.post("/medic/_find", json={"selector": {"type": {"$regexy": 1}}}, headers=ADMIN_JSON)
    assert r.status_code == 400 and r.json() == {
        "error": "invalid_operator",
        "reason": "Invalid operator: $regexy",
    }
    r = await c.post("/medic/_find", json={}, headers=ADMIN_JSON)
    assert r.status_code == 400 and r.json()["error"] == "missing_required_key"


async def test_changes_feed_since_limit_and_docs(sandbox: Running) -> None:
    c = sandbox.client
    start = (await c.get("/medic/_changes?since=now", headers={**JSON, **ADMIN_AUTH})).json()["last_seq"]
    await c.put("/medic/ch-1", json={"n": 1}, headers=ADMIN_JSON)
    await c.put("/medic/ch-2", json={"n": 2}, headers=ADMIN_JSON)
    r = await c.get(f"/medic/_changes?since={start}&include_docs=true", headers={**JSON, **ADMIN_AUTH})
    body = r.json()
    assert [row["id"] for row in body["results"]] == ["ch-1", "ch-2"]
    assert body["results"][1]["doc"]["n"] == 2
    assert body["results"][0]["changes"][0]["rev"].startswith("1-")
    r = await c.get(f"/medic/_changes?since={start}&limit=1", headers={**JSON, **ADMIN_AUTH})
    body = r.json()
    assert [row["id"] for row in body["results"]] == ["ch-1"] and body["pending"] == 1
    r = await c.get(f"/medic/_changes?since={body['last_seq']}", headers={**JSON, **ADMIN_AUTH})
    assert [row["id"] for row in r.json()["results"]] == ["ch-2"]


async def test_all_docs_keys_and_include_docs(sandbox: Running) -> None:
    c = sandbox.client
    await c.put("/medic/k-1", json={"n": 1}, headers=ADMIN_JSON)
    r = await c.post(
        "/medic/_all_docs", json={"keys": ["k-1", "k-missing"], "include_docs": True}, headers=ADMIN_JSON
    )
    rows = r.json()["rows"]
    assert rows[0]["id"] == "k-1" and rows[0]["doc"]["n"] == 1
    assert rows[1] == {"key": "k-missing", "error": "not_found"}
    r = await c.get('/medic/_all_docs?keys=["k-1"]', headers={**JSON, **ADMIN_AUTH})
    assert [row["id"] for row in r.json()["rows"]] == ["k-1"]


async def test_writes_need_can_edit(sandbox: Running) -> None:
    await sandbox.client.post(
        "/api/v2/users",
        json={"username": "de", "password": "Long-enough-pw-1", "roles": ["data_entry"]},
        headers=ADMIN_JSON,
    )
    from tests.sandbox.conftest import basic

    auth = basic("de", "Long-enough-pw-1")
    r = await sandbox.client.put("/medic/x", json={}, headers={**POST_JSON, **auth})
    assert r.status_code == 403 and r.json() == {"code": 403, "error": "Insufficient privileges"}
    r = await sandbox.client.post("/medic/_bulk_docs", json={"docs": []}, headers={**POST_JSON, **auth})
    assert r.status_code == 403


async def test_changes_longpoll_answers_when_a_write_arrives(sandbox: Running) -> None:
    import asyncio

    c = sandbox.client
    last = (await c.get("/medic/_changes?since=now", headers={**JSON, **ADMIN_AUTH})).json()["last_seq"]
    poll = asyncio.create_task(
        c.get(f"/medic/_changes?feed=longpoll&since={last}&timeout=20000", headers={**JSON, **ADMIN_AUTH})
    )
    await asyncio.sleep(0.1)
    assert not poll.done()
    await c.put("/medic/lp-1", json={"n": 1}, headers=ADMIN_JSON)
    r = await asyncio.wait_for(poll, timeout=20)
    assert [row["id"] for row in r.json()["results"]] == ["lp-1"]
    r = await c.get("/medic/_changes?feed=longpoll&since=now&timeout=10", headers={**JSON, **ADMIN_AUTH})
    assert r.json()["results"] == []


async def test_inline_attachments_are_served_as_stubs_and_by_name(sandbox: Running) -> None:
    import base64
    import hashlib

    c = sandbox.client
    xml = b"<h:html>form</h:html>"
    doc = {
        "type": "form",
        "_attachments": {"xml": {"content_type": "application/xml", "data": base64.b64encode(xml).decode()}},
    }
    r = await c.put("/medic/form:test", json=doc, headers=ADMIN_JSON)
    assert r.status_code == 201
    stored = (await c.get("/medic/form:test", headers={**JSON, **ADMIN_AUTH})).json()
    assert stored["_attachments"]["xml"] == {
        "content_type": "application/xml",
        "revpos": 1,
        "digest": "md5-" + base64.b64encode(hashlib.md5(xml).digest()).decode(),
        "length": len(xml),
        "stub": True,
    }
    r = await c.get("/medic/form:test/xml", headers=ADMIN_AUTH)
    assert r.content == xml and r.headers["content-type"].startswith("application/xml")
    # an update keeping the stub keeps the attachment; a stub for an unknown one is 412
    r = await c.put("/medic/form:test", json={**stored, "title": "T"}, headers=ADMIN_JSON)
    assert r.status_code == 201
    assert (await c.get("/medic/form:test/xml", headers=ADMIN_AUTH)).content == xml
    again = (await c.get("/medic/form:test", headers={**JSON, **ADMIN_AUTH})).json()
    again["_attachments"]["other"] = {"stub": True}
    r = await c.put("/medic/form:test", json=again, headers=ADMIN_JSON)
    assert r.status_code == 412 and r.json()["error"] == "missing_stub"


async def test_offline_changes_feed_has_only_the_users_default_docs(sandbox: Running) -> None:
    world = await build_world(sandbox.client)
    r = await sandbox.client.get("/medic/_changes", headers={**JSON, **world.chw_auth})
    ids = {row["id"] for row in r.json()["results"]}
    assert ids == {"settings", f"org.couchdb.user:{world.chw_name}"}
    r = await sandbox.client.get("/medic/_changes", headers={**JSON, **ADMIN_AUTH})
    assert world.patient in {row["id"] for row in r.json()["results"]}
