"""LOG_FORMAT=json: one JSON object per line, each carrying the transaction id of its request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog

from cht_interop.observability.logs import configure_logging
from tests.ltfu.conftest import encounter_body, push_patient


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The formatter on the root logger for one test; the previous handlers back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, structlog.get_config())
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    structlog.configure(**saved[2])


async def test_json_lines_carry_the_transaction_id(client: httpx.AsyncClient, json_logs: io.StringIO) -> None:
    patient = await push_patient(client)
    res = await client.post("/mediator/encounter", json=encounter_body(patient))
    assert res.status_code == 201

    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    (stored,) = [line for line in lines if line["event"].startswith("Encounter ")]
    assert (
        stored["event"]
        == f"Encounter {res.json()['id']} stored for Patient {patient_id(res)} (ServiceRequest None)"
    )
    assert stored["transaction_id"] == res.headers["x-transaction-id"]
    assert stored["level"] == "info" and stored["logger"] == "cht_interop.ltfu.encounters"
    assert stored["timestamp"].endswith("Z")


def patient_id(res: httpx.Response) -> Any:
    return res.json()["subject"]["reference"].rsplit("/", 1)[1]


def test_text_is_the_default_and_readable() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, structlog.get_config())
    stream = io.StringIO()
    try:
        configure_logging(stream=stream)
        with structlog.contextvars.bound_contextvars(transaction_id="tx-1"):
            logging.getLogger("cht_interop.test").info("callback to %s delivered", "emr.example.org")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        structlog.configure(**saved[2])
    line = stream.getvalue().strip()
    assert "callback to emr.example.org delivered" in line and "transaction_id=tx-1" in line
    assert not line.startswith("{")
