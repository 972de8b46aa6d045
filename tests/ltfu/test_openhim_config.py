"""A value set in the OpenHIM console reaches the LTFU workflow while it runs (no restart)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cht_interop.openhim.mediator import URN
from cht_interop.services import Services
from tests.ltfu.conftest import push_patient, register_requester, service_request_body
from tests.openhim.conftest import ROOT, until
from tests.support.live import serve_in_thread
from tests.support.openhim_double import OpenHimDouble


@pytest.fixture
def openhim() -> Iterator[tuple[OpenHimDouble, str]]:
    double = OpenHimDouble()
    with serve_in_thread(double.app()) as url:
        yield double, url


@pytest.fixture
def settings_overrides(openhim: tuple[OpenHimDouble, str]) -> dict[str, Any]:
    return {
        "OPENHIM_API_URL": openhim[1],
        "OPENHIM_USERNAME": ROOT[0],
        "OPENHIM_PASSWORD": ROOT[1],
        "OPENHIM_HEARTBEAT_SECONDS": 0.05,
    }


def bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": e} for e in entries]}


async def test_list_sync_max_from_the_console_applies_live(
    client: httpx.AsyncClient, services: Services, openhim: tuple[OpenHimDouble, str]
) -> None:
    double, _url = openhim
    await register_requester(client)
    patients = [await push_patient(client) for _ in range(4)]
    before = await client.post(
        "/mediator/service-request", json=bundle([service_request_body(p) for p in patients[:2]])
    )
    assert before.status_code == 200  # LTFU_LIST_SYNC_MAX 1000: written before the answer

    await until(lambda: len(double.heartbeats(URN)) >= 1, what="registered")
    assert double.put_config(URN, {**double.mediators[URN]["config"], "ltfu_list_sync_max": 1}) == 200
    await until(lambda: services.settings.live.ltfu_list_sync_max == 1, what="the config applied")

    after = await client.post(
        "/mediator/service-request", json=bundle([service_request_body(p) for p in patients[2:]])
    )
    assert after.status_code == 202  # now longer than the maximum: staged
