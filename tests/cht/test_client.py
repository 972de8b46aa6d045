"""ChtClient against the CHT double on a real loopback socket: headers, success, error classes."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from cht_interop.cht.client import ChtClient, ChtPermanentError, ChtTransientError
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


def follow_up(patient: str = "3f1c7c1e-6c1a-4a55-9b8f-0e3c0b5d1a22") -> dict[str, object]:
    return {
        "_meta": {"form": "interop_follow_up"},
        "patient_uuid": patient,
        "service_request_id": "sr-1",
        "Reason": "missed visit",
        "undeclared": "dropped",
    }


async def test_create_record_sends_the_headers_cht_needs(cht, http) -> None:
    double, url = cht
    client = ChtClient(url, "admin", "pass-admin-1", http)

    record_id = await client.create_record(follow_up())

    sent = double.requests[-1]
    assert sent.path == "/api/v2/records"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["authorization"] == "Basic " + base64.b64encode(b"admin:pass-admin-1").decode()
    assert "pass-admin-1" not in sent.url and "@" not in sent.url
    doc = double.records[record_id]
    assert doc["form"] == "INTEROP_FOLLOW_UP"
    # keys lower-cased, undeclared dropped (cht-core api/src/services/records.js)
    assert doc["fields"] == {
        "patient_uuid": "3f1c7c1e-6c1a-4a55-9b8f-0e3c0b5d1a22",
        "service_request_id": "sr-1",
        "reason": "missed visit",
    }


async def test_a_chw_with_can_create_records_may_create(cht, http) -> None:
    double, url = cht
    record_id = await ChtClient(url, "chw", "pass-chw-1", http).create_record(follow_up())
    assert record_id in double.records


async def test_unknown_form_is_permanent_with_the_cht_details(cht, http) -> None:
    double, url = cht
    client = ChtClient(url, "admin", "pass-admin-1", http)
    with pytest.raises(ChtPermanentError) as err:
        await client.create_record({"_meta": {"form": "no_such_form"}, "patient_uuid": "x"})
    assert err.value.status == 500
    assert err.value.details == "Form not found: NO_SUCH_FORM"
    assert double.records == {}


@pytest.mark.parametrize(
    ("body", "details"),
    [
        ({"patient_uuid": "x"}, "Missing _meta property."),
        ({"_meta": {"from": "+1"}, "patient_uuid": "x"}, "Missing required field: form"),
    ],
)
async def test_missing_meta_or_form_is_permanent(cht, http, body, details) -> None:
    _double, url = cht
    with pytest.raises(ChtPermanentError) as err:
        await ChtClient(url, "admin", "pass-admin-1", http).create_record(body)
    assert err.value.details == details


async def test_wrong_password_is_permanent_401(cht, http) -> None:
    _double, url = cht
    with pytest.raises(ChtPermanentError) as err:
        await ChtClient(url, "admin", "wrong", http).create_record(follow_up())
    assert err.value.status == 401
    assert "wrong" not in str(err.value)


async def test_user_without_permission_is_permanent_403(cht, http) -> None:
    double, url = cht
    double.users["viewer"] = User("pass-viewer", ["analytics"])
    with pytest.raises(ChtPermanentError) as err:
        await ChtClient(url, "viewer", "pass-viewer", http).create_record(follow_up())
    assert err.value.status == 403


async def test_too_many_failed_logins_is_transient_429(cht, http) -> None:
    _double, url = cht
    bad = ChtClient(url, "admin", "wrong", http)
    for _ in range(10):
        with pytest.raises(ChtPermanentError):
            await bad.create_record(follow_up())
    with pytest.raises(ChtTransientError) as err:
        await ChtClient(url, "admin", "pass-admin-1", http).create_record(follow_up())
    assert err.value.status == 429


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_errors_are_transient(cht, http, status) -> None:
    double, url = cht
    double.fail_next(1, status, b"<html>bad gateway</html>", content_type="text/html")
    client = ChtClient(url, "admin", "pass-admin-1", http)
    with pytest.raises(ChtTransientError) as err:
        await client.create_record(follow_up())
    assert err.value.status == status
    # the next call goes through
    assert await client.create_record(follow_up()) in double.records


async def test_500_without_a_known_detail_is_transient(cht, http) -> None:
    double, url = cht
    double.fail_next(1, 500, {"code": 500, "error": "Server error"})
    with pytest.raises(ChtTransientError) as err:
        await ChtClient(url, "admin", "pass-admin-1", http).create_record(follow_up())
    assert err.value.status == 500


async def test_500_text_body_with_form_not_found_is_permanent(cht, http) -> None:
    double, url = cht
    double.fail_next(1, 500, b'Server error: "Form not found: X"', content_type="text/plain")
    with pytest.raises(ChtPermanentError):
        await ChtClient(url, "admin", "pass-admin-1", http).create_record(follow_up())


async def test_200_without_success_true_is_a_failure(cht, http) -> None:
    double, url = cht
    double.fail_next(1, 200, {"success": False})
    with pytest.raises(ChtPermanentError):
        await ChtClient(url, "admin", "pass-admin-1", http).create_record(follow_up())
    double.fail_next(1, 200, b"<html>maintenance</html>", content_type="text/html")
    with pytest.raises(ChtTransientError):
        await ChtClient(url, "admin", "pass-admin-1", http).create_record(follow_up())
    assert double.records == {}


async def test_400_and_413_are_permanent(cht, http) -> None:
    double, url = cht
    client = ChtClient(url, "admin", "pass-admin-1", http)
    for status in (400, 404, 413):
        double.fail_next(1, status, {"code": status, "error": "nope"})
        with pytest.raises(ChtPermanentError) as err:
            await client.create_record(follow_up())
        assert err.value.status == status


async def test_unreachable_cht_is_transient(http) -> None:
    client = ChtClient(f"http://127.0.0.1:{free_port()}", "admin", "pass", http)
    with pytest.raises(ChtTransientError) as err:
        await client.create_record(follow_up())
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
        record_id = await ChtClient(url + "/cht/", "admin", "pass-admin-1", http).create_record(follow_up())
    assert record_id in double.records
