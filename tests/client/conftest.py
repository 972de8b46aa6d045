"""The interop server as a facility meets it: the real app (outbox worker on) on a loopback port,
a CHT double behind it, and the facility's callback receiver on another port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cht_interop.app import create_app
from cht_interop.client import CallbackReceiver, Notification
from tests.conftest import make_settings
from tests.support.cht_double import ChtDouble
from tests.support.live import serve_in_thread

PASSWORD = "test-password"  # make_settings' interop client password
SYNC_MAX = 4  # lists longer than this are written in the background (202 + status URL)


@pytest.fixture(scope="module")
def cht() -> Iterator[str]:
    with serve_in_thread(ChtDouble().app) as url:
        yield url


@pytest.fixture
def server(tmp_path: Path, database_url: str, cht: str) -> Iterator[str]:
    settings = make_settings(
        tmp_path,
        database_url,
        CHT_URL=cht,
        CHT_USERNAME="admin",
        CHT_PASSWORD="pass-admin-1",
        ALLOW_PRIVATE_CALLBACKS=True,
        LTFU_LIST_SYNC_MAX=SYNC_MAX,
        LTFU_LIST_CHUNK=2,
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


class Inbox:
    """What the facility's function was handed, waited on from the test's thread."""

    def __init__(self) -> None:
        self.items: list[tuple[dict[str, Any], Notification]] = []
        self._arrived = threading.Condition()

    async def __call__(self, encounter: dict[str, Any], notification: Notification) -> None:
        with self._arrived:
            self.items.append((encounter, notification))
            self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 30) -> list[tuple[dict[str, Any], Notification]]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.items) >= count, timeout=timeout):
                raise AssertionError(f"expected {count} encounter(s), got {len(self.items)}")
            return list(self.items)


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def callback(inbox: Inbox) -> Iterator[tuple[CallbackReceiver, str]]:
    receiver = CallbackReceiver(inbox, secret_path="s3cret-path")
    with serve_in_thread(receiver.app) as url:
        yield receiver, f"{url}/s3cret-path/fhir"
