"""The CHT client's tests against the CHT double behind a gate (``tests/support/cht_gate.py``):
the gate's fixture, and records as the worker writes them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from cht_interop.cht.client import ChtClient, RecordWrite
from cht_interop.cht.records import follow_up_record_id, record_doc
from tests.support.cht_gate import Gate
from tests.support.live import serve_in_thread

FORM = "INTEROP_FOLLOW_UP"


@pytest.fixture
def gate() -> Iterator[tuple[Gate, str]]:
    """The CHT double on a loopback socket, behind a gate that can refuse or lose answers."""
    g = Gate()
    with serve_in_thread(g.app()) as url:
        yield g, url


def record(n: int, form: str = "interop_follow_up") -> dict[str, Any]:
    body = {"_meta": {"form": form}, "patient_uuid": f"patient-{n}", "service_request_id": f"sr-{n}"}
    return record_doc(follow_up_record_id(f"fu-{n}"), body, reported_date_ms=1764072000000)


async def write_all(client: ChtClient, docs: list[dict[str, Any]]) -> list[RecordWrite | BaseException]:
    """Every doc written by its own concurrent caller, as the worker's submissions do."""
    return list(await asyncio.gather(*(client.write_record(d) for d in docs), return_exceptions=True))
