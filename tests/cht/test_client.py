"""ChtClient against the CHT double on a real loopback socket: headers, success, error classes."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from cht_interop.cht.client import ChtClient, ChtPermanentError, ChtTransientError, RecordWrite
from cht_interop.cht.records import follow_up_record_id, record_doc
from tests.support.cht_double import ChtDouble, User
from tests.support.live import free_port, serve_in_thread


@pytest.fixture
def cht() -> Iterator[tuple[ChtDouble, str]]:
    double = ChtDouble()
    with serve_in_thread(double.app) as url:
        yield double, url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def follow_up(
    patient: str = "3f1c7c1e-6c1a-4a55-9b8f-0e3c0b5d1a22", follow_up_id: str = "fu-1"
) -> dict[str, Any]:
    body = {
        "_meta": {"form": "interop_follow_up"},
        "patient_uuid": patient,
        "service_request_id": "sr-1",
        "Reason": "missed visit",
    }
    return record_doc(follow_up_record_id(follow_up_id), body, reported_date_ms=1764072000000)


async def test_write_record_posts_the_records_api_doc_under_the_follow_ups_id(cht, http) -> None:
    double, url = cht
    client = ChtClient(url, "admin", "pass-admin-1", http)

    written = await client.write_record(follow_up())

    assert written == RecordWrite("interop-follow-up-fu-1", created=True)
    sent = double.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/medic/_bulk_docs")
    assert [d["_id"] for d in orjson.loads(sent.body)["docs"]] == ["interop-follow-up-fu-1"]
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["authorization"] == "Basic " + base64.b64encode(b"admin:pass-admin-1").decode()
    assert "pass-admin-1" not in sent.url and "@" not in sent.url
    doc = double.records["interop-follow-up-fu-1"]
    # what cht-core's records API stores (api/src/services/records.js getDataRecord)
    assert {k: v for k, v in doc.items() if k != "_rev"} == {
        "_id": "interop-follow-up-fu-1",
        "type": "data_record",
        "form": "INTEROP_FOLLOW_UP",
        "errors": [],
        "tasks": [],
        "fields": {
            "patient_uuid": "3f1c7c1e-6c1a-4a55-9b8f-0e3c0b5d1a22",
            "service_request_id": "sr-1",
            "reason": "missed visit",
        },
        "reported_date": 1764072000000,
        "sms_message": {"form": "INTEROP_FOLLOW_UP"},
    }


async def test_writing_the_same_record_again_finds_it_there(cht, http) -> None:
    double, url = cht
    client = ChtClient(url, "admin", "pass-admin-1", http)
    first = await client.write_record(follow_up())
    rev = double.records[first.record_id]["_rev"]

    again = await client.write_record(follow_up())

    assert again == RecordWrite(first.record_id, created=False)
    assert len(double.records_of_form("INTEROP_FOLLOW_UP")) == 1
    assert double.records[first.record_id]["_rev"] == rev  # untouched
    # a per-doc conflict, then the stored doc read back
    assert [(r.method, r.path) for r in double.requests[-2:]] == [
        ("POST", "/medic/_bulk_docs"),
        ("POST", "/medic/_all_docs"),
    ]


async def test_an_id_held_by_another_kind_of_doc_is_permanent(cht, http) -> None:
    _double, url = cht
    client = ChtClient(url, "admin", "pass-admin-1", http)
    cancel = record_doc(follow_up_record_id("fu-1"), {"_meta": {"form": "interop_follow_up_cancel"}})
    await client.write_record(cancel)
    with pytest.raises(ChtPermanentError) as err:
        await client.write_record(follow_up())
    assert err.value.status == 409
    assert "not a INTEROP_FOLLOW_UP record" in err.value.message


async def test_a_chw_with_can_edit_may_write(cht, http) -> None:
    double, url = cht
    written = await ChtClient(url, "chw", "pass-chw-1", http).write_record(follow_up())
    assert written.record_id in double.records


def test_record_doc_needs_a_form() -> None:
    with pytest.raises(ValueError, match=r"_meta\.form"):
        record_doc("x", {"patient_uuid": "p"})
    assert record_doc("x", {"_meta": {"form": "a"}})["reported_date"] > 1764072000000


async def test_wrong_password_is_permanent_401(cht, http) -> None:
    _double, url = cht
    with pytest.raises(ChtPermanentError) as err:
        await ChtClient(url, "admin", "wrong", http).write_record(follow_up())
    assert err.value.status == 401
    assert "wrong" not in str(err.value)


async def test_user_without_can_edit_is_permanent_403(cht, http) -> None:
    double, url = cht
    double.users["viewer"] = User("pass-viewer", ["analytics"])
    with pytest.raises(ChtPermanentError) as err:
        await ChtClient(url, "viewer", "pass-viewer", http).write_record(follow_up())
    assert err.value.status == 403


async def test_too_many_failed_logins_is_transient_429(cht, http) -> None:
    _double, url = cht
    bad = ChtClient(url, "admin", "wrong", http)
    for _ in range(10):
        with pytest.raises(ChtPermanentError):
            await bad.write_record(follow_up())
    with pytest.raises(ChtTransientError) as err:
        await ChtClient(url, "admin", "pass-admin-1", http).write_record(follow_up())
    assert err.value.status == 429


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_errors_are_transient(cht, http, status) -> None:
    double, url = cht
    double.fail_next(1, status, b"<html>bad gateway</html>", content_type="text/html")
    client = ChtClient(url, "admin", "pass-admin-1", http)
    with pytest.raises(ChtTransientError) as err:
        await client.write_record(follow_up())
    assert err.value.status == status
    # the next call goes through
    assert (await client.write_record(follow_up())).record_id in double.records


async def test_500_without_a_known_detail_is_transient(cht, http) -> None:
    double, url = cht
    double.fail_next(1, 500, {"code": 500, "error": "Server error"})
    with pytest.raises(ChtTransientError) as err:
        await ChtClient(url, "admin", "pass-admin-1", http).write_record(follow_up())
    assert err.value.status == 500


async def test_500_text_body_with_form_not_found_is_permanent(cht, http) -> None:
    double, url = cht
    double.fail_next(1, 500, b'Server error: "Form not found: X"', content_type="text/plain")
    with pytest.raises(ChtPermanentError):
        await ChtClient(url, "admin", "pass-admin-1", http).write_record(follow_up())


async def test_a_2xx_that_is_not_couchdbs_ok_is_a_failure(cht, http) -> None:
    double, url = cht
    double.fail_next(1, 201, {"ok": False})
    with pytest.raises(ChtPermanentError):
        await ChtClient(url, "admin", "pass-admin-1", http).write_record(follow_up())
    double.fail_next(1, 200, b"<html>maintenance</html>", content_type="text/html")
    with pytest.raises(ChtTransientError):
        await ChtClient(url, "admin", "pass-admin-1", http).write_record(follow_up())
    assert double.records == {}


async def test_400_and_413_are_permanent(cht, http) -> None:
    double, url = cht
    client = ChtClient(url, "admin", "pass-admin-1", http)
    for status in (400, 404, 413):
        double.fail_next(1, status, {"code": status, "error": "nope"})
        with pytest.raises(ChtPermanentError) as err:
            await client.write_record(follow_up())
        assert err.value.status == status


async def test_unreachable_cht_is_transient(http) -> None:
    client = ChtClient(f"http://127.0.0.1:{free_port()}", "admin", "pass", http)
    with pytest.raises(ChtTransientError) as err:
        await client.write_record(follow_up())
    assert err.value.status is None


async def test_credentials_in_the_url_are_refused(http) -> None:
    with pytest.raises(ValueError, match="CHT_USERNAME"):
        ChtClient("https://admin:secret@cht.example.org", "admin", "secret", http)
    with pytest.raises(ValueError, match="http"):
        ChtClient("ftp://cht.example.org", "admin", "secret", http)


async def test_base_url_with_a_path_prefix(http) -> None:
    double = ChtDouble()
    from starlette.applications import Starlette
    from starlette.routing import Mount

    with serve_in_thread(Starlette(routes=[Mount("/cht", app=double.app)])) as url:
        written = await ChtClient(url + "/cht/", "admin", "pass-admin-1", http).write_record(follow_up())
    assert written.record_id in double.records
