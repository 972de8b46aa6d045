"""Calls inside the process (the embedded FHIR store) recorded as orchestrations, cut to size."""

from __future__ import annotations

import asyncio

import orjson

from cht_interop.kit import exchanges


def test_a_local_call_is_an_orchestration_marked_local_and_cut() -> None:
    async def request() -> exchanges.Recording:
        recording = exchanges.start()
        big = {"resourceType": "Bundle", "entry": [{"resource": {"id": str(n)}} for n in range(5000)]}
        exchange = exchanges.begin_local("embedded FHIR store", "POST", "/fhir", body=orjson.dumps(big))
        assert exchange is not None
        exchanges.answer_local(exchange, 200, b'{"resourceType":"Bundle","type":"transaction-response"}')
        return recording

    recording = asyncio.run(request())
    (entry,) = [exchanges.orchestration(e) for e in recording.exchanges]
    assert entry["name"] == "POST /fhir (embedded FHIR store)"
    assert (entry["request"]["host"], entry["request"]["port"]) == ("embedded FHIR store", "")
    assert len(entry["request"]["body"]) < exchanges.LOCAL_MAX_BODY + 200  # cut, however big the list
    assert entry["response"]["status"] == 200
    assert entry["response"]["body"].startswith('{"resourceType":"Bundle"')


def test_nothing_is_recorded_outside_a_recording() -> None:
    async def background() -> exchanges.Exchange | None:
        return exchanges.begin_local("embedded FHIR store", "GET", "/fhir/Task")

    assert asyncio.run(background()) is None
