"""Authentication to OpenHIM core: the token algorithm's vectors, and the scheme found by trying."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from cht_interop.openhim.auth import (
    Authenticator,
    Scheme,
    auth_token,
    passhash,
    token_headers,
    without_userinfo,
)
from cht_interop.openhim.errors import OpenHimRefused, OpenHimUnavailable
from tests.openhim.conftest import ROOT
from tests.support.live import free_port
from tests.support.openhim_double import OpenHimDouble, js_iso

SALT = "d9bcb40e-ae65-478f-962e-5e5e5e7d0a01"
PASSHASH = (
    "943a856bba65aad6c639d5c8d4a11fc8bb7fe9de62ae307aec8cf6ae6c1faab722127964c71db4bdd2ea2cdf60c6e4094"
    "dcad54d4522ab2839b65ae98100d0fb"
)
TOKEN = (
    "6e56f6d2e1f6f48f0a1c1907eab343330b1bd4aa16ebeb1ee6d9741745f42ffc7c8b5ceb5d44030cdddfbcd6fe26baf7284"
    "9a8e41cdf6d3b90158495fea067e6"
)


def test_token_vectors() -> None:
    """Core's seeded root passhash and a token for a fixed ts (salt first, then passhash+salt+ts)."""
    assert passhash(SALT, "openhim-password") == PASSHASH
    assert auth_token(PASSHASH, SALT, "2024-01-01T00:00:00.000Z") == TOKEN
    headers = token_headers("root@openhim.org", "openhim-password", SALT, "2024-01-01T00:00:00.000Z")
    assert headers == {
        "auth-username": "root@openhim.org",
        "auth-ts": "2024-01-01T00:00:00.000Z",
        "auth-salt": SALT,
        "auth-token": TOKEN,
    }


async def test_the_double_enforces_the_token_window(old_core: tuple[OpenHimDouble, str]) -> None:
    _double, url = old_core
    async with httpx.AsyncClient(base_url=url) as http:
        now = datetime.now(UTC)
        fresh = token_headers(*ROOT, SALT, js_iso(now))
        stale = token_headers(*ROOT, SALT, js_iso(now - timedelta(seconds=11)))
        wrong = {**fresh, "auth-token": "0" * 128}
        assert (await http.get("/mediators/x", headers=fresh)).status_code == 404  # authenticated
        assert (await http.get("/mediators/x", headers=stale)).status_code == 401
        assert (await http.get("/mediators/x", headers=wrong)).status_code == 401
        basic = httpx.BasicAuth(*ROOT)
        assert (await http.get("/mediators/x", auth=basic)).status_code == 401  # no Basic before 7.1


async def test_basic_on_a_current_core(core: tuple[OpenHimDouble, str]) -> None:
    double, url = core
    async with httpx.AsyncClient() as http:
        auth = Authenticator(http, url, *ROOT)
        assert (await auth.request("GET", "/mediators/unknown")).status_code == 404
        assert (await auth.request("GET", "/mediators/unknown")).status_code == 404
    assert auth.scheme is Scheme.BASIC
    assert [s.scheme for s in double.seen] == ["basic", "basic"]


async def test_token_on_an_old_core_found_by_trying_and_remembered(
    old_core: tuple[OpenHimDouble, str],
) -> None:
    double, url = old_core
    async with httpx.AsyncClient() as http:
        auth = Authenticator(http, url, *ROOT)
        for _ in range(3):
            assert (await auth.request("GET", "/mediators/unknown")).status_code == 404
    assert auth.scheme is Scheme.TOKEN
    # Basic was tried once, refused; then only the token headers
    assert [(s.scheme, s.status) for s in double.seen] == [("basic", 401)] + [("token", 404)] * 3


async def test_token_corrects_for_core_clock(old_core: tuple[OpenHimDouble, str]) -> None:
    """Core's window is ±10 s of *its* clock: a mediator whose clock is off by a minute still gets in,
    because auth-ts follows core's clock (from /authenticate's ts)."""
    double, url = old_core
    double.auth_window_seconds = 10
    skew = timedelta(seconds=60)
    async with httpx.AsyncClient() as http:
        auth = Authenticator(http, url, *ROOT, clock=lambda: datetime.now(UTC) + skew)
        response = await auth.request("GET", "/mediators/unknown")
    assert response.status_code == 404


async def test_basic_for_a_user_without_a_token_passport(core: tuple[OpenHimDouble, str]) -> None:
    double, url = core
    double.add_user("mediator@example.org", "s3cret", "salt", token_passport=False)
    async with httpx.AsyncClient() as http:
        auth = Authenticator(http, url, "mediator@example.org", "s3cret")
        assert (await auth.request("GET", "/mediators/unknown")).status_code == 404
    assert auth.scheme is Scheme.BASIC


@pytest.mark.parametrize("version", ["7.0.3", "8.5.0"])
async def test_wrong_password_is_refused(version: str) -> None:
    from tests.support.live import serve_in_thread

    double = OpenHimDouble(version=version)
    with serve_in_thread(double.app()) as url:
        async with httpx.AsyncClient() as http:
            auth = Authenticator(http, url, "root@openhim.org", "wrong")
            with pytest.raises(OpenHimRefused):
                await auth.request("GET", "/mediators/unknown")
    assert auth.scheme is None


async def test_core_down_is_unavailable() -> None:
    async with httpx.AsyncClient() as http:
        auth = Authenticator(http, f"http://127.0.0.1:{free_port()}", *ROOT)
        with pytest.raises(OpenHimUnavailable, match="cannot be reached"):
            await auth.request("GET", "/mediators/unknown")


@pytest.mark.parametrize(
    ("url", "bare"),
    [
        ("https://ops:pw@openhim:8080/", "https://openhim:8080"),
        ("https://openhim.example.org/api", "https://openhim.example.org/api"),
        ("http://u:p@[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_credentials_in_the_url_are_neither_sent_nor_logged(url: str, bare: str) -> None:
    assert without_userinfo(url) == bare
