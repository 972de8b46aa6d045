"""OpenHIM core doubles on loopback, and waiting for what the background heartbeat does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.live import serve_in_thread
from tests.support.openhim_double import OpenHimDouble

ROOT = ("root@openhim.org", "openhim-password")


@pytest.fixture
def core() -> Iterator[tuple[OpenHimDouble, str]]:
    """A current core (8.5.0: Basic and token)."""
    double = OpenHimDouble(version="8.5.0")
    with serve_in_thread(double.app()) as url:
        yield double, url


@pytest.fixture
def old_core() -> Iterator[tuple[OpenHimDouble, str]]:
    """A core before 7.1: the legacy token headers only."""
    double = OpenHimDouble(version="7.0.3")
    with serve_in_thread(double.app()) as url:
        yield double, url


async def until(check: Callable[[], bool], *, within: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` until true, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
