"""The Clients page: list (never a hash), add, set a password, remove, through the ClientDirectory."""

from __future__ import annotations

import re
from html import unescape

import httpx

from cht_interop.gateway.principals import Role
from cht_interop.services import Services
from tests.console.conftest import ADMIN, INTEROP, csrf_of, directory_of


def flat(page: httpx.Response) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


async def basic_ok(admin: httpx.AsyncClient, who: tuple[str, str]) -> bool:
    """Whether these credentials open the API (what the client itself would see)."""
    res = await admin.get("/fhir/metadata", auth=who)
    return res.status_code == 200


async def test_the_page_lists_each_client_with_its_roles_and_never_a_hash(admin: httpx.AsyncClient) -> None:
    page = await admin.get("/console/clients")
    assert page.status_code == 200
    text = flat(page)
    assert "admin (you) Administrator admin" in text
    assert "interop-client interop-client interop" in text
    assert "scrypt" not in page.text and "$" not in page.text  # no hash, in any form
    assert "cannot remove yourself" in text


async def test_add_a_client_then_it_calls_the_api_with_its_roles(
    admin: httpx.AsyncClient, services: Services
) -> None:
    page = await admin.get("/console/clients")
    form = {"csrf": csrf_of(page), "client_id": "emr-2", "name": "District EMR 2",
            "password": "Emr-2-password-x", "roles": ["requester"]}  # fmt: skip
    res = await admin.post("/console/clients", data=form)
    assert res.status_code == 303
    shown = await admin.get(res.headers["location"])
    assert "Client 'emr-2' added." in flat(shown)
    assert "emr-2 District EMR 2 requester" in flat(shown)
    stored = await directory_of(services).find("emr-2")
    assert stored is not None and stored.info.roles == frozenset({Role.REQUESTER})
    assert await basic_ok(admin, ("emr-2", "Emr-2-password-x"))


async def test_the_directorys_refusals_are_shown_with_their_reason(
    admin: httpx.AsyncClient, services: Services
) -> None:
    csrf = csrf_of(await admin.get("/console/clients"))
    cases = [
        ({"client_id": "has space", "password": "Long-enough-pw-1", "roles": ["cht"]}, "no colon or space"),
        ({"client_id": "short-pw", "password": "short", "roles": ["cht"]}, "at least 12 characters"),
        ({"client_id": "no-role", "password": "Long-enough-pw-1"}, "at least one role"),
        ({"client_id": "x", "password": "Long-enough-pw-1", "roles": ["root"]}, "unknown role 'root'"),
        ({"client_id": INTEROP[0], "password": "Long-enough-pw-1", "roles": ["cht"]}, "already exists"),
    ]
    for form, reason in cases:
        res = await admin.post("/console/clients", data={**form, "csrf": csrf})
        assert res.status_code == 400, form
        assert "Client not added" in flat(res) and reason in flat(res), flat(res)
    ids = [c.client_id for c in await directory_of(services).list()]
    assert ids == [ADMIN[0], INTEROP[0]]  # nothing half-written


async def test_set_password_replaces_the_old_one(admin: httpx.AsyncClient) -> None:
    csrf = csrf_of(await admin.get("/console/clients"))
    short = await admin.post(
        f"/console/clients/{INTEROP[0]}/password", data={"csrf": csrf, "password": "tiny"}
    )
    assert short.status_code == 400 and "at least 12 characters" in flat(short)
    assert await basic_ok(admin, INTEROP)
    res = await admin.post(
        f"/console/clients/{INTEROP[0]}/password", data={"csrf": csrf, "password": "A-new-interop-pw-1"}
    )
    assert res.status_code == 303
    assert "has a new password" in flat(await admin.get(res.headers["location"]))
    assert not await basic_ok(admin, INTEROP)
    assert await basic_ok(admin, (INTEROP[0], "A-new-interop-pw-1"))
    missing = await admin.post("/console/clients/nobody/password", data={"csrf": csrf, "password": "x" * 12})
    assert missing.status_code == 404


async def test_remove_a_client_but_never_yourself(admin: httpx.AsyncClient, services: Services) -> None:
    csrf = csrf_of(await admin.get("/console/clients"))
    self_removal = await admin.post(f"/console/clients/{ADMIN[0]}/remove", data={"csrf": csrf})
    assert self_removal.status_code == 409
    assert "cannot remove the client you are logged in as" in flat(self_removal)
    assert await directory_of(services).find(ADMIN[0]) is not None
    res = await admin.post(f"/console/clients/{INTEROP[0]}/remove", data={"csrf": csrf})
    assert res.status_code == 303
    assert "Client 'interop-client' removed" in flat(await admin.get(res.headers["location"]))
    assert await directory_of(services).find(INTEROP[0]) is None
    assert not await basic_ok(admin, INTEROP)


async def test_every_client_form_needs_the_csrf_token(admin: httpx.AsyncClient, services: Services) -> None:
    forms = [
        ("/console/clients", {"client_id": "emr-3", "password": "Emr-3-password-x", "roles": ["cht"]}),
        (f"/console/clients/{INTEROP[0]}/password", {"password": "A-new-interop-pw-1"}),
        (f"/console/clients/{INTEROP[0]}/remove", {}),
    ]
    for path, form in forms:
        assert (await admin.post(path, data={**form, "csrf": "forged"})).status_code == 403
    assert [c.client_id for c in await directory_of(services).list()] == [ADMIN[0], INTEROP[0]]
    assert await basic_ok(admin, INTEROP)
