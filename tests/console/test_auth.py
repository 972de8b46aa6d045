"""Who may use the console: login, the session cookie, CSRF, 403 for non-admins, security headers."""

from __future__ import annotations

import os
import stat
from typing import Any

import httpx
import pytest

from cht_interop.console.session import COOKIE, SECRET_FILE
from cht_interop.gateway.principals import Role
from cht_interop.services import Services
from tests.console.conftest import ADMIN, INTEROP, csrf_of, directory_of, log_in

PAGES = ["/console/", "/console/follow-ups", "/console/deliveries", "/console/lists",
         "/console/subscriptions", "/console/clients", "/console/transactions"]  # fmt: skip


@pytest.mark.parametrize("path", PAGES)
async def test_not_logged_in_is_sent_to_the_login_form(browser: httpx.AsyncClient, path: str) -> None:
    res = await browser.get(path, params={"status": "completed"} if "follow" in path else None)
    assert res.status_code == 303
    location = httpx.URL(res.headers["location"])
    assert location.path == "/console/login"
    assert location.params["next"].startswith(path)


async def test_admin_logs_in_and_sees_the_dashboard_with_security_headers(browser: httpx.AsyncClient) -> None:
    res = await log_in(browser)
    assert res.status_code == 303 and res.headers["location"] == "/console/"
    cookie = res.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    page = await browser.get("/console/")
    assert page.status_code == 200
    assert "Dashboard" in page.text and "admin" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp  # no script at all
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "same-origin"
    assert "<script" not in page.text


async def test_the_cookie_is_secure_over_https(app: Any, with_admin: None) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://console.test") as browser:
        res = await log_in(browser)
        assert res.status_code == 303
        assert "Secure" in res.headers["set-cookie"]
        assert (await browser.get("/console/")).status_code == 200


async def test_the_session_key_is_kept_in_the_data_dir_for_the_owner_only(
    browser: httpx.AsyncClient, services: Services
) -> None:
    await log_in(browser)
    path = services.settings.data_dir / SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_wrong_password_is_refused_and_logs_nobody_in(browser: httpx.AsyncClient) -> None:
    res = await log_in(browser, (ADMIN[0], "not-the-password"))
    assert res.status_code == 401
    assert "Wrong client id or password" in res.text
    assert (await browser.get("/console/")).status_code == 303


async def test_a_non_admin_client_gets_403(browser: httpx.AsyncClient) -> None:
    res = await log_in(browser, INTEROP)
    assert res.status_code == 403
    assert "not an administrator" in res.text
    assert (await browser.get("/console/")).status_code == 303  # no session was opened


async def test_a_client_given_the_admin_role_may_log_in(app: Any, services: Services) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as browser:
        assert (await log_in(browser, ("ops", "Ops-password-12"))).status_code == 401
        await directory_of(services).add("ops", frozenset({Role.ADMIN}), "Ops-password-12")
        assert (await log_in(browser, ("ops", "Ops-password-12"))).status_code == 303
        assert (await browser.get("/console/clients")).status_code == 200


@pytest.mark.parametrize("change", ["removed", "new password"])
async def test_a_removed_client_or_a_new_password_ends_the_session(
    admin: httpx.AsyncClient, app: Any, services: Services, change: str
) -> None:
    directory = directory_of(services)
    await directory.add("ops", frozenset({Role.ADMIN}), "Ops-password-12")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as other:
        assert (await log_in(other, ("ops", "Ops-password-12"))).status_code == 303
        assert (await other.get("/console/")).status_code == 200
        if change == "removed":
            await directory.remove("ops")
        else:
            await directory.set_password("ops", "Another-password-12")
        res = await other.get("/console/")
        assert res.status_code == 303 and httpx.URL(res.headers["location"]).path == "/console/login"
    assert (await admin.get("/console/")).status_code == 200  # the other administrator is untouched


async def test_too_many_failed_logins_answer_429_with_retry_after(
    browser: httpx.AsyncClient, services: Services
) -> None:
    statuses = [(await log_in(browser, (ADMIN[0], f"wrong-{i}"))).status_code for i in range(11)]
    assert statuses == [401] * 10 + [429]  # the gateway's throttle: 10 failures a minute
    res = await log_in(browser, ADMIN)  # even the right password waits: this one was never verified
    assert res.status_code == 429
    assert int(res.headers["retry-after"]) > 0
    assert "Too many failed logins" in res.text
    assert (await browser.get("/console/")).status_code == 303


async def test_login_without_the_forms_csrf_token_is_refused(browser: httpx.AsyncClient) -> None:
    await browser.get("/console/login")
    res = await browser.post("/console/login", data={"client_id": ADMIN[0], "password": ADMIN[1]})
    assert res.status_code == 403 and "Form refused" in res.text
    res = await browser.post(
        "/console/login", data={"client_id": ADMIN[0], "password": ADMIN[1], "csrf": "forged"}
    )
    assert res.status_code == 403
    assert (await browser.get("/console/")).status_code == 303


async def test_a_forged_or_foreign_cookie_is_no_session(browser: httpx.AsyncClient) -> None:
    from cht_interop.console.session import SessionCodec

    foreign = SessionCodec("another-key", 3600).serializer.dumps(
        {"csrf": "x", "id": "admin", "roles": ["admin"]}
    )
    browser.cookies.set(COOKIE, foreign, path="/console")
    assert (await browser.get("/console/")).status_code == 303


async def test_logout_needs_the_token_then_ends_the_session(admin: httpx.AsyncClient) -> None:
    page = await admin.get("/console/")
    assert (await admin.post("/console/logout", data={})).status_code == 403
    assert (await admin.get("/console/")).status_code == 200
    res = await admin.post("/console/logout", data={"csrf": csrf_of(page)})
    assert res.status_code == 303 and httpx.URL(res.headers["location"]).path == "/console/login"
    assert (await admin.get("/console/")).status_code == 303


async def test_login_never_redirects_off_the_console(browser: httpx.AsyncClient) -> None:
    form = await browser.get("/console/login", params={"next": "https://evil.example/"})
    res = await browser.post(
        "/console/login",
        data={"client_id": ADMIN[0], "password": ADMIN[1], "csrf": csrf_of(form), "next": "//evil.example/"},
    )
    assert res.status_code == 303 and res.headers["location"] == "/console/"


async def test_the_login_form_sends_a_logged_in_administrator_on(admin: httpx.AsyncClient) -> None:
    res = await admin.get("/console/login", params={"next": "/console/deliveries"})
    assert res.status_code == 303 and res.headers["location"] == "/console/deliveries"
