"""Calls inside the process (the embedded FHIR store) recorded as orchestrations, cut to size."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from cht_interop.kit import exchanges
from cht_interop.kit.redaction import clip, redact


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


def test_a_local_call_keeps_only_what_is_shown_of_its_bodies() -> None:
    """A recording lives until the journal has written it: a whole list's Bundle and its answer
    are not held meanwhile, only the part an orchestration shows (redacted first, whole)."""
    big = {
        "resourceType": "Bundle",
        "entry": [{"resource": {"id": str(n), "password": "hunter2"}} for n in range(5000)],
    }
    sent = orjson.dumps(big)

    async def request() -> exchanges.Exchange:
        exchanges.start()
        exchange = exchanges.begin_local("embedded FHIR store", "POST", "/fhir", body=sent)
        assert exchange is not None
        exchanges.answer_local(exchange, 200, sent)
        return exchange

    exchange = asyncio.run(request())
    assert len(exchange.body) <= exchanges.LOCAL_MAX_BODY
    assert len(exchange.response_body) <= exchanges.LOCAL_MAX_BODY
    assert b"hunter2" not in exchange.body + exchange.response_body

    whole = redact(sent)  # what the orchestration showed when the whole body was kept
    for max_body in (None, 100):
        entry = exchanges.orchestration(exchange, max_body=max_body)
        limit = exchanges.LOCAL_MAX_BODY if max_body is None else max_body
        assert entry["request"]["body"] == clip(whole, limit)
        assert entry["response"]["body"] == clip(whole, limit)
        assert entry["request"]["body"].endswith(f"[{len(whole) - limit} more characters not kept]")
    assert exchanges.orchestration(exchange, max_body=0)["request"]["body"] == ""


def test_a_small_local_body_is_shown_whole() -> None:
    async def request() -> exchanges.Exchange:
        exchanges.start()
        exchange = exchanges.begin_local("embedded FHIR store", "PUT", "/fhir/Endpoint/e", body=b'{"a":1}')
        assert exchange is not None
        exchanges.answer_local(exchange, 200, b'{"token":"abc","b":2}')
        return exchange

    entry = exchanges.orchestration(asyncio.run(request()))
    assert entry["request"]["body"] == '{"a":1}'
    assert entry["response"]["body"] == '{"token":"***","b":2}'


def test_a_local_search_is_shown_as_its_query_without_a_url_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A recorded store search shows its path and its query string as searched, not quoted;
    building the recording parses no URL (httpx parsed and quoted again what ``urlencode`` had
    quoted, for every store call of every follow-up)."""

    def no_parsing(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a local call's recording parsed a URL")

    async def request() -> exchanges.Recording:
        recording = exchanges.start()
        query = [("identifier", "cht|a b,cht|c"), ("_revinclude", "Task:patient")]
        exchange = exchanges.begin_local("embedded FHIR store", "GET", "/fhir/Patient", query)
        assert exchange is not None
        exchanges.answer_local(exchange, 200, b'{"resourceType":"Bundle","type":"searchset"}')
        return recording

    monkeypatch.setattr(httpx, "URL", no_parsing)
    recording = asyncio.run(request())
    monkeypatch.undo()
    (entry,) = [exchanges.orchestration(e) for e in recording.exchanges]
    assert entry["name"] == "GET /fhir/Patient (embedded FHIR store)"
    assert entry["request"]["path"] == "/fhir/Patient"
    assert entry["request"]["querystring"] == "identifier=cht|a b,cht|c&_revinclude=Task:patient"
    assert (entry["request"]["host"], entry["request"]["port"]) == ("embedded FHIR store", "")
