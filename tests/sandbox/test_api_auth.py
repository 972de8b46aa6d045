"""Authentication and the CHT's 401 rendering (cht-core api/src/auth.js, server-utils notLoggedIn)."""

from __future__ import annotations

from tests.sandbox.conftest import ADMIN, ADMIN_AUTH, JSON, Running, basic


async def test_json_client_without_credentials_gets_json_401(sandbox: Running) -> None:
    r = await sandbox.client.post("/api/v2/records", json={"_meta": {"form": "x"}}, headers=JSON)
    assert r.status_code == 401
    assert r.json() == {"code": 401, "error": "unauthorized"}


async def test_client_without_user_agent_is_prompted_for_basic_auth(sandbox: Running) -> None:
    r = await sandbox.client.post("/api/v2/records", json={}, headers={"User-Agent": ""})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="Medic Web Services"'
    assert r.text == "not logged in"


async def test_client_with_user_agent_and_no_json_accept_is_redirected_to_login(sandbox: Running) -> None:
    r = await sandbox.client.post("/api/v2/records?x=1", json={}, headers={"User-Agent": "curl/8"})
    assert r.status_code == 302
    assert r.headers["location"] == "/medic/login?redirect=%2Fapi%2Fv2%2Frecords%3Fx%3D1"


async def test_wrong_password_is_401(sandbox: Running) -> None:
    r = await sandbox.client.get("/medic/_all_docs", headers={**JSON, **basic(ADMIN[0], "wrong")})
    assert r.status_code == 401
    assert r.json() == {"code": 401, "error": "unauthorized"}


async def test_settings_always_prompt_for_basic_auth(sandbox: Running) -> None:
    r = await sandbox.client.get("/api/v1/settings", headers=JSON)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="Medic Web Services"'


async def test_health_needs_no_auth_and_everything_else_does(sandbox: Running) -> None:
    assert (await sandbox.client.get("/sandbox/health")).status_code == 200
    for method, path in [
        ("GET", "/medic/_changes"),
        ("GET", "/medic/settings"),
        ("POST", "/medic/_find"),
        ("GET", "/sandbox/api/tasks?user=admin"),
        ("POST", "/api/v1/people"),
    ]:
        r = await sandbox.client.request(
            method, path, headers={**JSON, "Content-Type": "application/json"}, content=b"{}"
        )
        assert r.status_code == 401, (method, path, r.status_code)


async def test_admin_basic_auth_works(sandbox: Running) -> None:
    r = await sandbox.client.get("/api/v1/settings", headers={**JSON, **ADMIN_AUTH})
    assert r.status_code == 200
    assert "INTEROP_FOLLOW_UP" in r.json()["forms"]


async def test_failed_logins_are_limited_with_429(sandbox: Running) -> None:
    wrong = {**JSON, **basic(ADMIN[0], "wrong-password")}
    for _ in range(10):
        assert (await sandbox.client.get("/medic/_all_docs", headers=wrong)).status_code == 401
    r = await sandbox.client.get("/medic/_all_docs", headers=wrong)
    assert r.status_code == 429
    assert r.json() == {"code": 429, "error": "Too Many Requests"}
    # the username is exhausted too, even with the right password, until the window passes
    r = await sandbox.client.get("/medic/_all_docs", headers={**JSON, **ADMIN_AUTH})
    assert r.status_code == 429


async def test_medic_login_sets_a_session_cookie_usable_on_the_api(sandbox: Running) -> None:
    r = await sandbox.client.post(
        "/medic/login",
        json={"user": ADMIN[0], "password": "nope"},
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 401 and r.json() == {"error": "Not logged in"}
    r = await sandbox.client.post(
        "/medic/login",
        json={"user": ADMIN[0], "password": ADMIN[1], "redirect": "/sandbox/chw"},
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 302 and r.text == "/sandbox/chw"
    assert "AuthSession" in r.cookies and "userCtx" in r.cookies
    r = await sandbox.client.get("/api/v1/settings", headers=JSON)  # the client keeps the cookie
    assert r.status_code == 200
