"""The registration document and the client's calls, against the core double (core's checks)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cht_interop import __version__
from cht_interop.openhim.client import OpenHimClient
from cht_interop.openhim.errors import OpenHimRefused, OpenHimRejected, OpenHimUnavailable
from cht_interop.openhim.mediator import URN, registration
from cht_interop.settings import Settings
from tests.openhim.conftest import ROOT
from tests.support.openhim_double import OpenHimDouble


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, DATA_DIR=tmp_path, **values)  # type: ignore[call-arg]


def test_the_document(tmp_path: Path) -> None:
    doc = registration(settings(tmp_path, OPENHIM_MEDIATOR_URL="https://interop.example.org:8443"))
    assert doc["urn"] == URN == "urn:mediator:cht-interop"
    assert doc["version"] == __version__
    assert [c["urlPattern"] for c in doc["defaultChannelConfig"]] == ["^/mediator/.*$", "^/fhir/.*$"]
    route = doc["endpoints"][0]
    assert (route["host"], route["port"], route["secured"]) == ("interop.example.org", 8443, True)
    assert {d["param"]: d["type"] for d in doc["configDefs"]} == {
        "follow_up_expiry_seconds": "number",
        "delivery_horizon_seconds": "number",
        "ltfu_list_sync_max": "number",
    }
    assert doc["config"] == {
        "follow_up_expiry_seconds": 8 * 24 * 3600,
        "delivery_horizon_seconds": 24 * 3600,
        "ltfu_list_sync_max": 1000,
    }
    for channel in doc["defaultChannelConfig"]:
        assert channel["methods"], "a channel without methods never matches (core 7.0.1+)"


def test_no_fhir_channel_with_an_external_fhir_server(tmp_path: Path) -> None:
    doc = registration(settings(tmp_path, FHIR_URL="http://hapi:8080/fhir"))
    assert [c["name"] for c in doc["defaultChannelConfig"]] == ["Mediator"]


async def test_register_repeat_and_upgrade(core: tuple[OpenHimDouble, str], tmp_path: Path) -> None:
    double, url = core
    doc = registration(settings(tmp_path))
    async with httpx.AsyncClient() as http:
        client = OpenHimClient(http, url, *ROOT)
        await client.register(doc)
        assert double.mediators[URN]["version"] == __version__
        assert double.put_config(URN, {**doc["config"], "ltfu_list_sync_max": 5}) == 200

        await client.register({**doc, "description": "same version: ignored"})  # 201, nothing changes
        assert double.mediators[URN]["description"] == doc["description"]

        newer = {**doc, "version": "99.0.0", "description": "upgraded"}
        await client.register(newer)
        stored = double.mediators[URN]
        assert (stored["version"], stored["description"]) == ("99.0.0", "upgraded")
        assert stored["config"]["ltfu_list_sync_max"] == 5  # the administrator's value is kept

        await client.register(doc)  # an older version changes nothing
        assert double.mediators[URN]["version"] == "99.0.0"
    assert all(s.status == 201 for s in double.seen if s.path == "/mediators")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "1.0"}, "SemVer"),
        ({"urn": None}, "URN is required"),
        ({"endpoints": []}, "At least 1 endpoint is required"),
        ({"config": {"unknown": 1}}, "No config definition found for parameter unknown"),
        ({"config": {"ltfu_list_sync_max": "many"}}, "to be a number"),
        ({"name": None}, "name"),
    ],
)
async def test_core_refuses_an_invalid_registration(
    core: tuple[OpenHimDouble, str], tmp_path: Path, change: dict[str, object], message: str
) -> None:
    """The double checks as core does: what we send passes (above), these do not."""
    _double, url = core
    doc = {**registration(settings(tmp_path)), **change}
    async with httpx.AsyncClient() as http:
        with pytest.raises(OpenHimRejected, match=message) as caught:
            await OpenHimClient(http, url, *ROOT).register(doc)
    assert caught.value.status == 400


async def test_heartbeat_answers(core: tuple[OpenHimDouble, str], tmp_path: Path) -> None:
    double, url = core
    doc = registration(settings(tmp_path))
    async with httpx.AsyncClient() as http:
        client = OpenHimClient(http, url, *ROOT)
        with pytest.raises(OpenHimRejected) as unknown:
            await client.heartbeat(1.0)
        assert unknown.value.status == 404
        await client.register(doc)
        assert await client.heartbeat(1.5, want_config=True) == doc["config"]
        assert await client.heartbeat(2.5) is None
        assert double.put_config(URN, {**doc["config"], "delivery_horizon_seconds": 60}) == 200
        changed = await client.heartbeat(3.5)  # changed since the last heartbeat: sent once
        assert changed is not None and changed["delivery_horizon_seconds"] == 60
        assert await client.heartbeat(4.5) is None
        assert await client.stored_config() == changed
    assert [s.body for s in double.heartbeats(URN)][:2] == [{"uptime": 1.5, "config": True}, {"uptime": 2.5}]


async def test_install_default_channels(core: tuple[OpenHimDouble, str], tmp_path: Path) -> None:
    double, url = core
    async with httpx.AsyncClient() as http:
        client = OpenHimClient(http, url, *ROOT)
        await client.register(registration(settings(tmp_path)))
        await client.install_channels([])
        assert sorted(double.channels) == ["FHIR Server", "Mediator"]
        with pytest.raises(OpenHimUnavailable, match="500"):  # core: the channel name is unique
            await client.install_channels(["Mediator"])
        with pytest.raises(OpenHimRejected, match="400"):
            await client.install_channels(["nope"])


async def test_ok_when_config_asked_and_none_stored(core: tuple[OpenHimDouble, str], tmp_path: Path) -> None:
    """Core's quirk (core issue 548): ``OK`` as text when config is asked for and none is stored."""
    double, url = core
    doc = {k: v for k, v in registration(settings(tmp_path)).items() if k != "config"}
    async with httpx.AsyncClient() as http:
        client = OpenHimClient(http, url, *ROOT)
        await client.register(doc)
        assert await client.heartbeat(1.0, want_config=True) is None
    assert double.heartbeats(URN)[0].status == 200


async def test_a_user_without_mediator_permission_is_refused(
    core: tuple[OpenHimDouble, str], tmp_path: Path
) -> None:
    double, url = core
    double.add_user("viewer@example.org", "view-pass-1", "salt-2", admin=False)
    async with httpx.AsyncClient() as http:
        with pytest.raises(OpenHimRefused) as caught:
            await OpenHimClient(http, url, "viewer@example.org", "view-pass-1").register(
                registration(settings(tmp_path))
            )
    assert caught.value.status == 403
    assert URN not in double.mediators
