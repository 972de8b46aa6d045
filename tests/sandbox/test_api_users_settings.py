"""``POST /api/v2/users`` (cht-core user-management), settings and the credentials API."""

from __future__ import annotations

from cht_interop.sandbox.store import USERS, VAULT
from tests.sandbox.conftest import ADMIN_AUTH, JSON, POST_JSON, Running, basic
from tests.sandbox.helpers import CHW_PASSWORD, build_world


async def _users(sandbox: Running, body: object, auth: dict[str, str] = ADMIN_AUTH):
    return await sandbox.client.post("/api/v2/users", json=body, headers={**POST_JSON, **auth})


async def test_user_creation_response_and_stored_docs(sandbox: Running) -> None:
    world = await build_world(sandbox.client)
    store = sandbox.state.sandbox.store
    user = store.get(USERS, f"org.couchdb.user:{world.chw_name}")
    assert user["roles"] == ["chw"]  # offline role: no mm-online
    assert user["facility_id"] == world.health_center
    assert user["contact_id"] == world.chw_contact
    assert CHW_PASSWORD not in str(user) and user["password_hash"].startswith("scrypt$")
    settings = (
        await sandbox.client.get(f"/medic/org.couchdb.user:{world.chw_name}", headers={**JSON, **ADMIN_AUTH})
    ).json()
    assert settings["type"] == "user-settings" and settings["contact_id"] == world.chw_contact
    contact = (await sandbox.client.get(f"/medic/{world.chw_contact}", headers={**JSON, **ADMIN_AUTH})).json()
    assert contact["parent"]["_id"] == world.health_center


async def test_response_shape(sandbox: Running) -> None:
    hc = (
        await sandbox.client.post(
            "/api/v1/places",
            json={"name": "D", "type": "district_hospital"},
            headers={**POST_JSON, **ADMIN_AUTH},
        )
    ).json()["id"]
    r = await _users(
        sandbox,
        {
            "username": "po",
            "password": "Officer-pw-2024!",
            "roles": ["program_officer"],
            "place": hc,
            "contact": {"name": "PO"},
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"user", "user-settings", "contact"}
    assert (
        body["user"]["id"] == "org.couchdb.user:po" and body["user-settings"]["id"] == "org.couchdb.user:po"
    )
    assert set(body["contact"]) == {"id", "rev"}
    doc = sandbox.state.sandbox.store.get(USERS, "org.couchdb.user:po")
    assert doc["roles"] == ["program_officer", "mm-online"]


async def test_user_errors(sandbox: Running) -> None:
    cases = [
        ({"username": "x"}, "Missing required fields: password, type or roles"),
        (
            {"username": "x", "password": "Long-enough-pw-1", "roles": ["chw"]},
            "Missing required fields: place, contact",
        ),
        (
            {"username": "Bad Name", "password": "Long-enough-pw-1", "roles": ["data_entry"]},
            "Invalid user name. Valid characters are lower case letters, numbers, underscore (_), "
            "and hyphen (-).",
        ),
        (
            {"username": "x", "password": "short", "roles": ["data_entry"]},
            "The password must be at least 8 characters long.",
        ),
        (
            {"username": "x", "password": "aaaaaaaa", "roles": ["data_entry"]},
            "The password is too easy to guess. Include a range of types of characters to increase "
            "the score.",
        ),
    ]
    for body, message in cases:
        r = await _users(sandbox, body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["message"] == message
        assert set(error) == {"message", "translationKey", "translationParams"}
    ok = {"username": "dup", "password": "Long-enough-pw-1", "roles": ["data_entry"]}
    assert (await _users(sandbox, ok)).status_code == 200
    r = await _users(sandbox, ok)
    assert r.status_code == 400 and r.json()["error"]["message"] == 'Username "dup" already taken.'
    r = await _users(sandbox, {**ok, "username": "other", "place": "missing-place"})
    assert r.status_code == 404


async def test_array_input_answers_an_array(sandbox: Running) -> None:
    r = await _users(
        sandbox,
        [{"username": "a1", "password": "Long-enough-pw-1", "roles": ["data_entry"]}, {"username": "a2"}],
    )
    assert r.status_code == 200
    first, second = r.json()
    assert first["user"]["id"] == "org.couchdb.user:a1"
    assert second == {"error": "Missing required fields: password, type or roles"}


async def test_users_content_type_and_permission(sandbox: Running) -> None:
    r = await sandbox.client.post(
        "/api/v2/users",
        content=b"{}",
        headers={**JSON, **ADMIN_AUTH, "Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 400
    world = await build_world(sandbox.client)
    r = await _users(
        sandbox, {"username": "z", "password": "Long-enough-pw-1", "roles": ["data_entry"]}, world.chw_auth
    )
    assert r.status_code == 403 and r.json() == {"code": 403, "error": "Insufficient privileges"}


async def test_created_user_can_log_in_with_basic_auth(sandbox: Running) -> None:
    world = await build_world(sandbox.client)
    r = await sandbox.client.get("/api/v1/settings", headers={**JSON, **world.chw_auth})
    assert r.status_code == 200
    r = await sandbox.client.get(
        "/api/v1/settings", headers={**JSON, **basic(world.chw_name, "nope-nope-nope")}
    )
    assert r.status_code == 401


async def test_settings_put_merges_replaces_and_overwrites(sandbox: Running) -> None:
    put = sandbox.client.put
    h = {**POST_JSON, **ADMIN_AUTH}
    r = await put("/api/v1/settings", json={"transitions": {"muting": True}}, headers=h)
    assert r.json() == {"success": True, "updated": True}
    settings = (await sandbox.client.get("/api/v1/settings", headers={**JSON, **ADMIN_AUTH})).json()
    assert settings["transitions"]["muting"] is True
    assert settings["transitions"]["mark_for_outbound"] is True  # deep merge kept the rest
    r = await put("/api/v1/settings", json={"transitions": {"muting": True}}, headers=h)
    assert r.json() == {"success": True, "updated": False}
    r = await put("/api/v1/settings?replace=1", json={"transitions": {"muting": False}}, headers=h)
    settings = (await sandbox.client.get("/api/v1/settings", headers={**JSON, **ADMIN_AUTH})).json()
    assert settings["transitions"] == {"muting": False}  # top-level key replaced
    assert "outbound" in settings  # other keys untouched
    r = await put("/api/v1/settings?overwrite=1", json={"locale": "fr"}, headers=h)
    settings = (await sandbox.client.get("/api/v1/settings", headers={**JSON, **ADMIN_AUTH})).json()
    assert settings == {"locale": "fr"}


async def test_settings_put_rules(sandbox: Running) -> None:
    r = await sandbox.client.put(
        "/api/v1/settings", content=b"{}", headers={**JSON, **ADMIN_AUTH, "Content-Type": "text/plain"}
    )
    assert r.status_code == 400 and r.json()["error"] == "Content-Type must be application/json"
    world = await build_world(sandbox.client)
    r = await sandbox.client.put(
        "/api/v1/settings", json={"locale": "x"}, headers={**POST_JSON, **world.chw_auth}
    )
    # auth.check(req, ['can_edit', 'can_configure']): the chw can edit, but not configure
    assert r.status_code == 403 and r.json() == {"code": 403, "error": "Insufficient privileges"}


async def test_credentials_api(sandbox: Running) -> None:
    h = {**JSON, "Content-Type": "text/plain"}
    r = await sandbox.client.put(
        "/api/v1/credentials/openhim1", content=b"s3cret-value", headers={**h, **ADMIN_AUTH}
    )
    assert r.status_code == 200 and r.json() == {"ok": True}
    vault = sandbox.state.sandbox.vault
    assert vault.get("openhim1") == "s3cret-value"
    stored = sandbox.state.sandbox.store.get(VAULT, "credential:openhim1")
    assert "s3cret-value" not in str(stored)
    r = await sandbox.client.put("/api/v1/credentials/openhim1", content=b"", headers={**h, **ADMIN_AUTH})
    assert r.status_code == 400 and r.json() == {"code": 400, "error": "Missing required request body"}
    world = await build_world(sandbox.client)
    r = await sandbox.client.put("/api/v1/credentials/k", content=b"x", headers={**h, **world.chw_auth})
    assert r.status_code == 403
    assert r.json() == {
        "code": 403,
        "error": "forbidden",
        "details": "Offline users are not allowed access to this endpoint",
    }
    await sandbox.client.post(
        "/api/v2/users",
        json={"username": "de", "password": "Long-enough-pw-1", "roles": ["data_entry"]},
        headers={**POST_JSON, **ADMIN_AUTH},
    )
    # data_entry has no offline flag in the reference roles: online, but not a DB admin
    r = await sandbox.client.put(
        "/api/v1/credentials/k", content=b"x", headers={**h, **basic("de", "Long-enough-pw-1")}
    )
    assert r.status_code == 403 and r.json() == {"code": 403, "error": "Insufficient permissions"}
    r = await sandbox.client.put("/api/v1/credentials/k", content=b"x", headers=h)
    assert r.status_code == 401


async def test_contact_must_be_a_person_within_the_place(sandbox: Running) -> None:
    world = await build_world(sandbox.client)
    base = {"password": "Long-enough-pw-1", "roles": ["chw"]}
    r = await _users(
        sandbox, {**base, "username": "c1", "place": world.clinic, "contact": world.health_center}
    )
    assert r.status_code == 400 and r.json()["error"]["message"] == "Wrong type, contact is not a person."
    r = await _users(sandbox, {**base, "username": "c2", "place": world.clinic, "contact": world.chw_contact})
    assert r.status_code == 400 and r.json()["error"]["message"] == "Contact is not within place."
    assert sandbox.state.sandbox.store.find(USERS, "org.couchdb.user:c2") is None
