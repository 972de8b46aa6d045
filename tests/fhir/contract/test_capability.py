"""The CapabilityStatement is honest: every interaction it claims works over HTTP, and a sample of
those it does not claim is refused cleanly (a 4xx OperationOutcome, never a 500).

The statement is read through the SMART ``fhirclient`` (its typed model parses it). ``EXERCISE``
says how to perform each interaction code; when ``capability.SUPPORTED`` gains a line (``patch``,
``history-type``, ``conditionalRead: full-support``...), the claim is exercised here: a claimed code
with no way to exercise it fails the test, so the table and this file move together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from fhirclient import client as smart_client
from fhirclient.models.capabilitystatement import CapabilityStatement

from tests.conftest import CLIENT_AUTH
from tests.fhir.contract.samples import identifier, sample


@dataclass
class Ctx:
    """One exercise: an HTTP client on the live server, the type, a tag unique to it."""

    http: httpx.Client
    rtype: str
    tag: str
    refs: dict[str, str] = field(default_factory=dict)

    def body(self, **extra: Any) -> dict[str, Any]:
        return {**sample(self.rtype, self.tag, self.refs), **extra}

    def create(self) -> dict[str, Any]:
        r = self.http.post(self.rtype, json=self.body())
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        return created

    def ok(self, r: httpx.Response, *statuses: int) -> dict[str, Any]:
        assert r.status_code in (statuses or (200,)), f"{r.request.method} {r.request.url}: {r.text}"
        body: dict[str, Any] = r.json() if r.content else {}
        return body


# ---- how to exercise each claimed interaction -------------------------------------------------------


def _read(c: Ctx) -> None:
    res = c.create()
    got = c.ok(c.http.get(f"{c.rtype}/{res['id']}"))
    assert got["id"] == res["id"] and got["resourceType"] == c.rtype


def _vread(c: Ctx) -> None:
    res = c.create()
    got = c.ok(c.http.get(f"{c.rtype}/{res['id']}/_history/1"))
    assert got["meta"]["versionId"] == "1"


def _update(c: Ctx) -> None:
    res = c.create()
    changed = c.body(id=res["id"], text={"status": "additional", "div": res["text"]["div"]})
    got = c.ok(c.http.put(f"{c.rtype}/{res['id']}", json=changed))
    assert got["meta"]["versionId"] == "2"  # an identical body would be a no-op (HAPI), still version 1


def _patch(c: Ctx) -> None:
    res = c.create()
    ops = [{"op": "replace", "path": "/text/status", "value": "additional"}]
    r = c.http.patch(
        f"{c.rtype}/{res['id']}", json=ops, headers={"Content-Type": "application/json-patch+json"}
    )
    assert c.ok(r)["text"]["status"] == "additional"


def _delete(c: Ctx) -> None:
    res = c.create()
    c.ok(c.http.delete(f"{c.rtype}/{res['id']}"))
    assert c.http.get(f"{c.rtype}/{res['id']}").status_code == 410


def _history_instance(c: Ctx) -> None:
    res = c.create()
    bundle = c.ok(c.http.get(f"{c.rtype}/{res['id']}/_history"))
    assert bundle["type"] == "history" and bundle["entry"][0]["resource"]["id"] == res["id"]


def _history_type(c: Ctx) -> None:
    res = c.create()
    bundle = c.ok(c.http.get(f"{c.rtype}/_history"))
    assert bundle["type"] == "history"
    assert res["id"] in {e.get("resource", {}).get("id") for e in bundle.get("entry", [])}


def _create(c: Ctx) -> None:
    r = c.http.post(c.rtype, json=c.body())
    assert r.status_code == 201 and r.headers["Location"], r.text


def _search_type(c: Ctx) -> None:
    res = c.create()
    bundle = c.ok(c.http.get(c.rtype, params={"_id": res["id"]}))
    assert bundle["type"] == "searchset" and [e["resource"]["id"] for e in bundle["entry"]] == [res["id"]]


TYPE_EXERCISE: dict[str, Callable[[Ctx], None]] = {
    "read": _read,
    "vread": _vread,
    "update": _update,
    "patch": _patch,
    "delete": _delete,
    "history-instance": _history_instance,
    "history-type": _history_type,
    "create": _create,
    "search-type": _search_type,
}


def _bundle(c: Ctx, kind: str) -> None:
    entry = {"resource": c.body(), "request": {"method": "POST", "url": c.rtype}}
    out = c.ok(c.http.post("", json={"resourceType": "Bundle", "type": kind, "entry": [entry]}))
    assert out["type"] == f"{kind}-response"
    assert out["entry"][0]["response"]["status"].startswith("201")


def _history_system(c: Ctx) -> None:
    c.create()
    assert c.ok(c.http.get("_history"))["type"] == "history"


def _search_system(c: Ctx) -> None:
    res = c.create()
    bundle = c.ok(c.http.get("", params={"_id": res["id"]}))
    assert bundle["type"] == "searchset"


SYSTEM_EXERCISE: dict[str, Callable[[Ctx], None]] = {
    "transaction": lambda c: _bundle(c, "transaction"),
    "batch": lambda c: _bundle(c, "batch"),
    "history-system": _history_system,
    "search-system": _search_system,
}

# an unclaimed interaction must be refused: the request that would perform it
UNCLAIMED_REQUEST: dict[str, Callable[[Ctx], httpx.Response]] = {
    "patch": lambda c: c.http.patch(
        f"{c.rtype}/{c.create()['id']}", json=[], headers={"Content-Type": "application/json-patch+json"}
    ),
    "history-type": lambda c: c.http.get(f"{c.rtype}/_history"),
    "history-system": lambda c: c.http.get("_history"),
    "search-system": lambda c: c.http.get("", params={"_id": "x"}),
}


# ---- the statement, through fhirclient --------------------------------------------------------------


@pytest.fixture(scope="module")
def statement(fhir_url: str) -> CapabilityStatement:
    smart = smart_client.FHIRClient(settings={"app_id": "cht-interop-tests", "api_base": fhir_url + "/"})
    smart.server.session.auth = CLIENT_AUTH
    cs = smart.server.capabilityStatement
    assert isinstance(cs, CapabilityStatement)
    return cs


@pytest.fixture
def http(fhir_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fhir_url + "/", auth=CLIENT_AUTH, timeout=30) as c:
        yield c


def _ctx(http: httpx.Client, rtype: str, unique: str) -> Ctx:
    c = Ctx(http, rtype, unique)
    if rtype == "ServiceRequest":
        c.refs["Patient"] = Ctx(http, "Patient", unique).create()["id"]
    return c


def test_statement_parses_and_lists_every_type(statement: CapabilityStatement) -> None:
    assert statement.fhirVersion == "4.0.1" and statement.kind == "instance"
    rest = statement.rest[0]
    assert rest.mode == "server" and len(rest.resource) >= 9


def test_every_claimed_interaction_works(
    statement: CapabilityStatement, http: httpx.Client, unique: str
) -> None:
    rest = statement.rest[0]
    for res in rest.resource:
        for interaction in res.interaction:
            code = interaction.code
            assert code in TYPE_EXERCISE, f"claimed {code} has no exercise in TYPE_EXERCISE"
            TYPE_EXERCISE[code](_ctx(http, res.type, f"{unique}-{res.type}-{code}"))
    for interaction in rest.interaction or []:
        assert interaction.code in SYSTEM_EXERCISE, f"claimed {interaction.code} has no exercise"
        SYSTEM_EXERCISE[interaction.code](_ctx(http, "Patient", f"{unique}-sys-{interaction.code}"))


def test_unclaimed_interactions_are_refused_cleanly(
    statement: CapabilityStatement, http: httpx.Client, unique: str
) -> None:
    rest = statement.rest[0]
    claimed_system = {i.code for i in rest.interaction or []}
    patient = next(r for r in rest.resource if r.type == "Patient")
    claimed = {i.code for i in patient.interaction} | claimed_system
    refused = [code for code in UNCLAIMED_REQUEST if code not in claimed]
    for code in refused:
        r = UNCLAIMED_REQUEST[code](Ctx(http, "Patient", f"{unique}-{code}"))
        assert 400 <= r.status_code < 500, f"unclaimed {code}: {r.status_code} {r.text}"
        assert r.json()["resourceType"] == "OperationOutcome", r.text
    # operations the statement does not name are refused as HAPI does (HAPI-0389)
    names = {op.name for op in patient.operation or []}
    for op in ("everything", "meta", "expunge"):
        assert op not in names
        r = http.post(f"Patient/${op}", json={"resourceType": "Parameters"})
        assert r.status_code == 400 and "HAPI-0389" in r.text, r.text


def test_conditional_interactions_as_claimed(
    statement: CapabilityStatement, http: httpx.Client, unique: str
) -> None:
    for res in statement.rest[0].resource:
        c = _ctx(http, res.type, f"{unique}-{res.type}-cond")
        match = identifier(c.tag)
        if res.type == "Subscription":
            continue  # R4 Subscription has no identifier to match on
        if res.conditionalCreate:
            if_none = {"If-None-Exist": f"identifier={match}"}
            first = c.ok(c.http.post(res.type, json=c.body(), headers=if_none), 201)
            assert c.ok(c.http.post(res.type, json=c.body(), headers=if_none))["id"] == first["id"]
        if res.conditionalUpdate:
            out = c.ok(c.http.put(res.type, params={"identifier": match}, json=c.body()), 200, 201)
            assert out["resourceType"] == res.type
        if res.conditionalDelete in ("single", "multiple"):
            c.ok(c.http.delete(res.type, params={"identifier": match}))
            assert c.ok(c.http.get(res.type, params={"identifier": match})).get("entry") is None
        if res.conditionalRead in ("modified-since", "not-match", "full-support"):
            created = c.create()
            url = f"{res.type}/{created['id']}"
            if res.conditionalRead in ("not-match", "full-support"):
                assert c.http.get(url, headers={"If-None-Match": 'W/"1"'}).status_code == 304
            if res.conditionalRead in ("modified-since", "full-support"):
                later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
                assert c.http.get(url, headers={"If-Modified-Since": later}).status_code == 304


def test_includes_search_params_and_operations_as_claimed(
    statement: CapabilityStatement, http: httpx.Client, unique: str
) -> None:
    for res in statement.rest[0].resource:
        for inc in res.searchInclude or []:
            assert http.get(res.type, params={"_include": inc}).status_code == 200, inc
        for rev in res.searchRevInclude or []:
            assert http.get(res.type, params={"_revinclude": rev}).status_code == 200, rev
        for p in res.searchParam or []:
            query = {"_id": {"_id": "x"}, "_lastUpdated": {"_lastUpdated": "ge2000-01-01"}}.get(
                p.name, {f"{p.name}:missing": "true"}
            )
            assert http.get(res.type, params=query).status_code == 200, p.name
        for op in res.operation or []:
            assert op.name == "validate", f"claimed ${op.name} has no exercise"
            c = _ctx(http, res.type, f"{unique}-{res.type}-validate")
            r = http.post(f"{res.type}/$validate", json=c.body())
            assert r.status_code == 200, r.text
            assert r.json()["issue"][0]["severity"] == "information"
