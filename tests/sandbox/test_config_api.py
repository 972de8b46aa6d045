"""What configuration tools call (cht-conf, CHT scripts), answered as cht-core 5.2's API does:
sessions, database info, version, legacy settings paths, XForm validation, users (v1, CSV, info),
views, unknown ``/api`` paths; and the CHT's password rule on a table of examples."""

from __future__ import annotations

import pytest

from cht_interop.sandbox.users import password_score
from tests.sandbox.conftest import ADMIN, ADMIN_AUTH, JSON, POST_JSON, Running
from tests.sandbox.helpers import build_world

# (password, simple-password-tester score worked out by hand: length + 2 x distinct characters
# + 15 x (classes - 1), classes = digit, lower, upper, \W; lengths and characters in UTF-16 units)
PASSWORDS = [
    ("Dakar1234", 9 + 2 * 8 + 15 * 2),  # the reference CHW's: 55, accepted
    ("Password1", 9 + 2 * 8 + 15 * 2),  # 55: the rule is this formula, not a dictionary
    ("aaaaaaaa", 8 + 2 * 1 + 0),
    ("abcdefgh", 8 + 2 * 8 + 0),
    ("abcd_efgh", 9 + 2 * 9 + 0),  # "_" is a word character: no "other" class
    ("abcd-efgh", 9 + 2 * 9 + 15),
    ("abcdefghijklmnop", 16 + 2 * 16 + 0),  # 48
    ("abcdefghijklmnopq", 17 + 2 * 17 + 0),  # 51
    ("12345678", 8 + 2 * 8 + 0),
    ("Abcdefg1", 8 + 2 * 8 + 30),
    ("aA1!aA1!", 8 + 2 * 4 + 45),
    ("\U0001f600\U0001f600\U0001f600aB1", 9 + 2 * 5 + 45),  # 3 emoji = 6 code units, 2 distinct
]


@pytest.mark.parametrize(("password", "score"), PASSWORDS)
def test_password_score_is_simple_password_tester(password: str, score: int) -> None:
    assert password_score(password) == score


@pytest.mark.parametrize(("password", "score"), PASSWORDS)
async def test_users_api_accepts_a_password_by_its_score(sandbox: Running, password: str, score: int) -> None:
    body = {"username": "someone", "password": password, "roles": ["data_entry"]}
    r = await sandbox.client.post("/api/v2/users", json=body, headers={**POST_JSON, **ADMIN_AUTH})
    if score >= 50:
        assert r.status_code == 200, r.text
        login = await sandbox.client.post("/_session", json={"name": "someone", "password": password})
        assert login.status_code == 200
    else:
        assert r.status_code == 400
        assert r.json()["error"]["message"].startswith("The password is too easy to guess.")


async def test_short_passwords_are_refused_by_js_length(sandbox: Running) -> None:
    for password, status in (("Ab1!xyz", 400), ("\U0001f600Ab1!xy", 200)):  # 7 units; 8 units
        body = {"username": f"u{status}", "password": password, "roles": ["data_entry"]}
        r = await sandbox.client.post("/api/v2/users", json=body, headers={**POST_JSON, **ADMIN_AUTH})
        assert r.status_code == status, (password, r.text)
        if status == 400:
            assert r.json()["error"]["message"] == "The password must be at least 8 characters long."


async def test_session_cookie_login_as_couchdb(sandbox: Running) -> None:
    c = sandbox.client
    r = await c.post("/_session", json={"name": ADMIN[0], "password": "wrong"})
    assert r.status_code == 401
    assert r.json() == {"error": "unauthorized", "reason": "Name or password is incorrect."}
    r = await c.post("/_session", json={"name": ADMIN[0], "password": ADMIN[1]})
    assert r.status_code == 200 and r.json() == {"ok": True, "name": "admin", "roles": ["_admin"]}
    cookie = r.headers["set-cookie"]
    token = cookie.split(";")[0].removeprefix("AuthSession=")
    assert "=" not in token and "; Expires=" in cookie and "; Max-Age=" in cookie and "HttpOnly" in cookie
    c.cookies.clear()
    r = await c.get("/medic/settings", headers={**JSON, "Cookie": f"AuthSession={token}"})
    assert r.status_code == 200
    r = await c.get("/_session", headers={"Cookie": f"AuthSession={token}"})
    assert r.json()["userCtx"] == {"name": "admin", "roles": ["_admin"]}
    assert r.json()["info"]["authenticated"] == "cookie"
    assert (await c.get("/_session")).status_code == 401
    r = await c.post(
        "/_session",
        content=f"name={ADMIN[0]}&password={ADMIN[1]}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200


async def test_database_info_and_redirect(sandbox: Running) -> None:
    c = sandbox.client
    r = await c.get("/medic")
    assert r.status_code == 302 and r.headers["location"] == "/medic/"
    info = (await c.get("/medic/", headers={**JSON, **ADMIN_AUTH})).json()
    assert info["db_name"] == "medic" and info["doc_count"] == 1  # the settings doc
    assert info["doc_del_count"] == 0
    await c.put("/medic/x", json={"a": 1}, headers={**POST_JSON, **ADMIN_AUTH})
    rev = (await c.get("/medic/x", headers={**JSON, **ADMIN_AUTH})).json()["_rev"]
    await c.delete(f"/medic/x?rev={rev}", headers={**JSON, **ADMIN_AUTH})
    info = (await c.get("/medic/", headers={**JSON, **ADMIN_AUTH})).json()
    assert (info["doc_count"], info["doc_del_count"]) == (1, 1)
    world = await build_world(c)
    r = await c.get("/medic/", headers={**JSON, **world.chw_auth})
    assert r.status_code == 403  # offline users: the CHT's firewall on CouchDB paths


async def test_deploy_info_and_legacy_settings_paths(sandbox: Running) -> None:
    c = sandbox.client
    assert (await c.get("/api/deploy-info", headers=JSON)).status_code == 401
    info = (await c.get("/api/deploy-info", headers={**JSON, **ADMIN_AUTH})).json()
    assert info["version"] == "5.2.0"
    legacy = (await c.get("/medic/_design/medic/_rewrite/app_settings/medic", headers=ADMIN_AUTH)).json()
    assert legacy["settings"] == sandbox.state.sandbox.settings() and legacy["meta"] == {}
    path = "/medic/_design/medic/_rewrite/app_settings/medic/roles.chw.offline"
    assert (await c.get(path, headers=ADMIN_AUTH)).json()["settings"] is True
    path = "/medic/_design/medic/_rewrite/app_settings/medic/no.such.key"
    assert (await c.get(path, headers=ADMIN_AUTH)).json()["settings"] == {}
    put = "/medic/_design/medic/_rewrite/update_settings/medic?replace=1"
    r = await c.put(put, json={"locale": "fr"}, headers={**POST_JSON, **ADMIN_AUTH})
    assert r.json() == {"success": True, "updated": True}
    r = await c.put(put, json={"locale": "fr"}, headers={**POST_JSON, **ADMIN_AUTH})
    assert r.json() == {"success": True, "updated": False}
    r = await c.put(put, content=b'{"locale":"x"}', headers={**ADMIN_AUTH, "Content-Type": "text/plain"})
    assert r.status_code == 400
    deprecated = (await c.get("/api/v1/settings/deprecated-transitions", headers=ADMIN_AUTH)).json()
    assert [d["name"] for d in deprecated] == ["generate_patient_id_on_people", "update_notifications"]
    assert deprecated[0]["deprecationMessage"] == (
        "generate_patient_id_on_people transition is deprecated since 3.8.x. "
        'Please use "generate_shortcode_on_contacts" transition instead.'
    )
    config = (await c.get("/api/couch-config-attachments", headers=ADMIN_AUTH)).json()
    assert "application/json" in config["compressible_types"]


async def test_forms_validate(sandbox: Running) -> None:
    c = sandbox.client
    xml = {**ADMIN_AUTH, "Content-Type": "application/xml"}
    good = (
        '<h:html xmlns="http://www.w3.org/2002/xforms" xmlns:h="http://www.w3.org/1999/xhtml">'
        '<h:head><h:title>T</h:title><model><instance><data id="t"/></instance></model></h:head>'
        "<h:body/></h:html>"
    )
    r = await c.post("/api/v1/forms/validate", content=good, headers=xml)
    assert r.status_code == 200 and r.json() == {"ok": True}
    for bad in ("<h:html", "<html/>", '<!DOCTYPE x [<!ENTITY e "x">]><x>&e;</x>'):
        r = await c.post("/api/v1/forms/validate", content=bad, headers=xml)
        assert r.status_code == 400 and r.json()["error"].startswith("Error transforming xml"), bad
    r = await c.post("/api/v1/forms/validate", content=good, headers={"Content-Type": "application/xml"})
    assert r.status_code == 401 and r.json() == {"error": "Not logged in"}


async def test_users_v1_csv_and_info(sandbox: Running) -> None:
    c = sandbox.client
    world = await build_world(c)
    body = {"username": "po1", "password": "Officer-pw-2024!", "roles": ["program_officer"]}
    r = await c.post("/api/v1/users", json=body, headers={**POST_JSON, **ADMIN_AUTH})
    assert r.status_code == 200 and set(r.json()) == {"user", "user-settings"}
    r = await c.post(
        "/api/v1/users", json=body, headers={**ADMIN_AUTH, "Content-Type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 400  # a postJson route: exactly application/json
    csv = (
        "username,password,type,place,contact.name,contact.type,import.status:excluded\n"
        f'chw2,Dakar1234,chw,{world.health_center},"Chw Two",person,\n'
        f"chw3,Dakar1234,chw,{world.health_center},Chw Three,person,imported\n"
        "weak,aaaaaaaa,data_entry,,,,\n"
    )
    r = await c.post("/api/v2/users", content=csv, headers={**ADMIN_AUTH, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    first, second = r.json()
    assert set(first) == {"user", "user-settings", "contact"}
    assert second["error"].startswith("The password is too easy to guess.")
    contact = (await c.get(f"/medic/{first['contact']['id']}", headers={**JSON, **ADMIN_AUTH})).json()
    assert contact["name"] == "Chw Two"
    assert (await c.post("/_session", json={"name": "chw3", "password": "Dakar1234"})).status_code == 401

    params = {"role": '["chw"]', "facility_id": world.health_center}
    info = (await c.get("/api/v1/users-info", params=params, headers={**JSON, **ADMIN_AUTH})).json()
    assert info["limit"] == 10000 and info["warn"] is False
    own = (await c.get("/api/v1/users-info", headers={**JSON, **world.chw_auth})).json()
    # the same place's docs (contacts, settings), and the CHW's own user-settings doc
    assert own["total_docs"] == info["total_docs"] + 1 and info["total_docs"] > 3
    r = await c.get("/api/v1/users-info", params={"role": "chw"}, headers={**JSON, **ADMIN_AUTH})
    assert r.status_code == 400
    assert r.json()["error"] == "Missing required query params: role and/or facility_id"
    params = {"role": "program_officer", "facility_id": world.health_center}
    r = await c.get("/api/v1/users-info", params=params, headers={**JSON, **ADMIN_AUTH})
    assert r.status_code == 400 and r.json()["error"] == "Provided role is not offline"


async def test_unknown_api_paths_answer_as_couchdb(sandbox: Running) -> None:
    c = sandbox.client
    r = await c.get("/api/v1/nothing-here", headers=ADMIN_AUTH)
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "reason": "Database does not exist."}
    r = await c.get("/api/v1/people", headers=ADMIN_AUTH)  # a POST route, read with GET
    assert r.status_code == 404 and r.json()["reason"] == "Database does not exist."
    assert (await c.get("/api/v1/nothing-here", headers=JSON)).status_code == 401


async def test_views_and_find_by_index(sandbox: Running) -> None:
    c = sandbox.client
    world = await build_world(c)
    reports = [
        {"_id": "r1", "type": "data_record", "form": "f", "fields": {"patient_uuid": world.patient}},
        {"_id": "r2", "type": "data_record", "form": "g", "patient_id": world.patient},
        {"_id": "r3", "type": "data_record", "form": "f", "fields": {"patient_uuid": "other"}},
    ]
    r = await c.post("/medic/_bulk_docs", json={"docs": reports}, headers={**POST_JSON, **ADMIN_AUTH})
    assert r.status_code == 201
    view = "/medic/_design/medic-client/_view/reports_by_subject"
    rows = (await c.get(view, params={"key": f'"{world.patient}"'}, headers=ADMIN_AUTH)).json()["rows"]
    assert [row["id"] for row in rows] == ["r1", "r2"]
    body = {"keys": [["health_center_missing"], [world.health_center]], "include_docs": True}
    view = "/medic/_design/medic/_view/contacts_by_depth"
    rows = (await c.post(view, json=body, headers={**POST_JSON, **ADMIN_AUTH})).json()["rows"]
    descendants = {row["id"] for row in rows}
    assert {world.health_center, world.clinic, world.patient, world.chw_contact} == descendants
    assert all(row["doc"]["_id"] == row["id"] for row in rows)
    for bad in ({"skip": '"x"'}, {"limit": "-1"}, {"key": "not json"}):
        r = await c.get(view, params=bad, headers=ADMIN_AUTH)
        assert r.status_code == 400, (bad, r.text)
    r = await c.get("/medic/_design/medic/_view/nope", headers=ADMIN_AUTH)
    assert r.status_code == 404
    assert (await c.get(view, headers={**JSON, **world.chw_auth})).status_code == 403

    async def find(selector: dict[str, object], **extra: object) -> list[str]:
        r = await c.post(
            "/medic/_find", json={"selector": selector, **extra}, headers={**POST_JSON, **ADMIN_AUTH}
        )
        assert r.status_code == 200, r.text
        return [d["_id"] for d in r.json()["docs"]]

    assert await find({"type": "data_record", "form": "f"}) == ["r1", "r3"]
    assert await find({"form": {"$in": ["f", "g"]}, "fields.patient_uuid": "other"}) == ["r3"]
    assert await find({"type": {"$eq": "data_record"}}, skip=1, limit=1) == ["r2"]
    assert await find({"form": {"$ne": "f"}, "type": "data_record"}) == ["r2"]
    assert await find({"type": "data_record"}, limit=0) == []
    for bad in ({"limit": -1}, {"skip": "x"}, {"limit": 2.5}):
        r = await c.post(
            "/medic/_find", json={"selector": {"type": "x"}, **bad}, headers={**POST_JSON, **ADMIN_AUTH}
        )
        assert r.status_code == 400 and r.json()["error"] == "bad_request", bad


async def test_post_to_the_database_and_the_deployed_design_docs(sandbox: Running) -> None:
    c = sandbox.client
    r = await c.post("/medic/", json={"type": "note", "text": "hi"}, headers={**POST_JSON, **ADMIN_AUTH})
    assert r.status_code == 201 and r.json()["ok"] is True
    stored = (await c.get(f"/medic/{r.json()['id']}", headers={**JSON, **ADMIN_AUTH})).json()
    assert stored["text"] == "hi" and stored["_rev"] == r.json()["rev"]
    ddoc = (await c.get("/medic/_design/medic-client", headers={**JSON, **ADMIN_AUTH})).json()
    assert ddoc["deploy_info"]["version"] == "5.2.0"
    world = await build_world(c)
    assert (await c.get("/medic/_design/medic-client", headers={**JSON, **world.chw_auth})).status_code == 200
    assert (await c.get("/medic/_design/medic", headers={**JSON, **world.chw_auth})).status_code == 403
    outside = {"type": "data_record", "form": "x", "fields": {"patient_uuid": "someone-else"}}
    r = await c.post("/medic/", json=outside, headers={**POST_JSON, **world.chw_auth})
    assert r.status_code == 403
    inside = {**outside, "fields": {"patient_uuid": world.patient}}
    assert (await c.post("/medic/", json=inside, headers={**POST_JSON, **world.chw_auth})).status_code == 201


async def test_all_docs_ranges_and_bad_keys(sandbox: Running) -> None:
    c = sandbox.client
    docs = [{"_id": f"doc-{n}", "n": n} for n in range(5)]
    await c.post("/medic/_bulk_docs", json={"docs": docs}, headers={**POST_JSON, **ADMIN_AUTH})
    params = {"startkey": '"doc-1"', "endkey": '"doc-3"', "limit": "2", "include_docs": "true"}
    body = (await c.get("/medic/_all_docs", params=params, headers={**JSON, **ADMIN_AUTH})).json()
    assert [row["id"] for row in body["rows"]] == ["doc-1", "doc-2"]
    assert body["rows"][0]["doc"]["n"] == 1 and body["total_rows"] == 6  # with the settings doc
    for bad in ({"startkey": "1"}, {"endkey": "[1]"}, {"keys": '"doc-1"'}):
        r = await c.get("/medic/_all_docs", params=bad, headers={**JSON, **ADMIN_AUTH})
        assert r.status_code == 400 and r.json()["error"] == "bad_request", bad
    r = await c.post("/medic/_all_docs", json={"keys": "doc-1"}, headers={**POST_JSON, **ADMIN_AUTH})
    assert r.status_code == 400


async def test_what_a_chw_replicates_is_read_by_key_and_matches_the_scope_rule(sandbox: Running) -> None:
    from cht_interop.sandbox.scope import scope_for, visible_docs
    from cht_interop.sandbox.store import MEDIC

    c = sandbox.client
    world = await build_world(c)
    reports = [
        {"_id": "in-1", "type": "data_record", "form": "f", "fields": {"patient_uuid": world.patient}},
        {"_id": "in-2", "type": "data_record", "form": "f", "contact": {"_id": world.chw_contact}},
        {"_id": "out-1", "type": "data_record", "form": "f", "fields": {"patient_uuid": "elsewhere"}},
        {"_id": "none-1", "type": "data_record", "form": "f"},  # no key: unallocated, by permission
        {"_id": "other-place", "type": "clinic", "name": "Far", "parent": {"_id": world.district}},
    ]
    await c.post("/medic/_bulk_docs", json={"docs": reports}, headers={**POST_JSON, **ADMIN_AUTH})
    core = sandbox.state.sandbox
    user = core.auth.lookup(world.chw_name)
    assert user is not None
    scope = scope_for(core, user)
    by_rule = [d["_id"] for d in core.store.all(MEDIC) if scope.allows(d)]
    by_key = [d["_id"] for d in visible_docs(core, user)]
    assert by_key == by_rule
    assert ("none-1" in by_key) is scope.unallocated
    assert {"in-1", "in-2", world.patient, world.clinic} <= set(by_key)
    assert not {"out-1", "other-place", world.district} & set(by_key)
