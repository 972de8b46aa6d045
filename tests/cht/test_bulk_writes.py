"""Records written at the same time share one ``POST /medic/_bulk_docs``: each caller still gets its
own record's answer, exactly one record per id whatever the resends, and a failure of the whole
request is every caller's (transient) failure, seen once by the pacer.

Against the CHT double on a real loopback socket, which answers ``_bulk_docs`` as CouchDB does
(a result per doc, in order; ``conflict`` for an id already there).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from cht_interop.cht.client import ChtClient, ChtPermanentError, ChtTransientError, RecordWrite
from tests.cht.conftest import FORM, record, write_all


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


async def test_concurrent_records_go_in_one_request_each_caller_gets_its_own(gate, http) -> None:
    g, url = gate
    client = ChtClient(url, "admin", "pass-admin-1", http)
    docs = [record(n) for n in range(20)]

    results = await write_all(client, docs)

    assert results == [RecordWrite(d["_id"], created=True) for d in docs]
    assert g.bulk_requests() == [[d["_id"] for d in docs]]
    assert len(g.double.records_of_form(FORM)) == 20


async def test_a_request_carries_at_most_the_batch_size(gate, http) -> None:
    g, url = gate
    client = ChtClient(url, "admin", "pass-admin-1", http, write_batch_size=8)

    results = await write_all(client, [record(n) for n in range(20)])

    assert all(isinstance(r, RecordWrite) and r.created for r in results)
    assert sorted(len(ids) for ids in g.bulk_requests()) == [4, 8, 8]


async def test_a_lost_answer_then_the_resend_finds_every_record_there(gate, http) -> None:
    g, url = gate
    client = ChtClient(url, "admin", "pass-admin-1", http)
    docs = [record(n) for n in range(10)]
    g.lose_answers = 1

    first = await write_all(client, docs)
    again = await write_all(client, docs)  # the jobs resent

    assert g.lost == 1
    assert all(isinstance(r, ChtTransientError) and r.status == 504 for r in first)
    assert again == [RecordWrite(d["_id"], created=False) for d in docs]
    stored = g.double.records_of_form(FORM)
    assert sorted(r["_id"] for r in stored) == sorted(d["_id"] for d in docs)  # exactly one each
    # the conflicts of the resend were read back in one call
    assert [r.path for r in g.double.requests].count("/medic/_all_docs") == 1


async def test_an_id_taken_by_another_form_fails_only_that_record(gate, http) -> None:
    g, url = gate
    client = ChtClient(url, "admin", "pass-admin-1", http)
    taken = record(3, form="interop_follow_up_cancel")  # same _id, another form
    await client.write_record(taken)
    already = record(5)
    await client.write_record(already)  # an earlier attempt's record
    docs = [record(n) for n in range(8)]

    results = await write_all(client, docs)

    assert isinstance(results[3], ChtPermanentError) and results[3].status == 409
    assert "not a INTEROP_FOLLOW_UP record" in results[3].message
    assert results[5] == RecordWrite(docs[5]["_id"], created=False)
    assert [r for n, r in enumerate(results) if n not in (3, 5)] == [
        RecordWrite(d["_id"], created=True) for n, d in enumerate(docs) if n not in (3, 5)
    ]
    assert g.double.records[docs[3]["_id"]]["form"] == "INTEROP_FOLLOW_UP_CANCEL"  # left alone
    assert g.bulk_requests()[-1] == [d["_id"] for d in docs]  # all eight in one request


async def test_a_per_doc_error_is_that_records_own(gate, http) -> None:
    g, url = gate
    client = ChtClient(url, "admin", "pass-admin-1", http)
    docs = [record(n) for n in range(6)]
    g.double.reject_doc(docs[2]["_id"], "only admins may write here")

    results = await write_all(client, docs)

    assert isinstance(results[2], ChtPermanentError) and results[2].status == 403
    assert "forbidden" in results[2].message and "only admins" in results[2].message
    assert [r for n, r in enumerate(results) if n != 2] == [
        RecordWrite(d["_id"], created=True) for n, d in enumerate(docs) if n != 2
    ]
    assert len(g.bulk_requests()) == 1


async def test_a_refused_request_fails_every_record_once_then_all_go_in(gate, http) -> None:
    g, url = gate
    client = ChtClient(url, "admin", "pass-admin-1", http)
    docs = [record(n) for n in range(12)]
    g.refuse = 1

    refused = await write_all(client, docs)

    assert all(isinstance(r, ChtTransientError) and r.status == 429 and r.retry_after == 1 for r in refused)
    assert client.pacer.refusals == 1  # one request refused: one congestion event, not twelve
    assert client.pacer.paused_for() > 0.5

    retried = await write_all(client, docs)  # waits out the Retry-After in the pacer

    assert retried == [RecordWrite(d["_id"], created=True) for d in docs]
    assert sorted(r["_id"] for r in g.double.records_of_form(FORM)) == sorted(d["_id"] for d in docs)


async def test_a_malformed_answer_is_not_taken_as_stored(gate, http) -> None:
    g, url = gate
    client = ChtClient(url, "admin", "pass-admin-1", http)
    g.double.fail_next(1, 201, [{"ok": True, "id": "someone-else", "rev": "1-a"}])

    results = await write_all(client, [record(1), record(2)])

    # a result per doc is what CouchDB answers: anything else stores nothing we can vouch for
    assert all(isinstance(r, ChtPermanentError) for r in results)
    assert len(g.bulk_requests()) == 1
