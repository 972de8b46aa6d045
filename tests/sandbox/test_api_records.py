"""``POST /api/v2/records`` and ``/api/v1/records`` (cht-core api/src/services/records.js)."""

from __future__ import annotations

from tests.sandbox.conftest import ADMIN_AUTH, JSON, POST_JSON, Running
from tests.sandbox.helpers import build_world


async def _stored(sandbox: Running, doc_id: str) -> dict:
    r = await sandbox.client.get(f"/medic/{doc_id}", headers={**JSON, **ADMIN_AUTH})
    assert r.status_code == 200
    return r.json()


async def test_record_is_stored_with_uppercase_form_lowercase_keys_and_declared_fields_only(
    sandbox: Running,
) -> None:
    r = await sandbox.client.post(
        "/api/v2/records",
        json={
            "_meta": {"form": "interop_follow_up", "from": "+254700000009"},
            "PATIENT_UUID": "p-1",
            "extra": 1,
        },
        headers={**POST_JSON, **ADMIN_AUTH},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True
    doc = await _stored(sandbox, body["id"])
    assert doc["type"] == "data_record"
    assert doc["form"] == "INTEROP_FOLLOW_UP"
    assert doc["fields"] == {"patient_uuid": "p-1"}
    assert doc["errors"] == [] and doc["tasks"] == []
    assert doc["sms_message"] == {"form": "INTEROP_FOLLOW_UP", "from": "+254700000009"}
    assert doc["from"] == "+254700000009"
    assert isinstance(doc["reported_date"], int)
    assert "contact" not in doc and "patient_uuid" not in doc


async def test_v1_records_and_charset_suffix_are_accepted(sandbox: Running) -> None:
    r = await sandbox.client.post(
        "/api/v1/records",
        content=b'{"_meta": {"form": "INTEROP_FOLLOW_UP", "reported_date": "1700000000000"}, '
        b'"patient_uuid": "x"}',
        headers={**JSON, **ADMIN_AUTH, "Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200
    doc = await _stored(sandbox, r.json()["id"])
    assert doc["reported_date"] == 1700000000000


async def test_missing_meta_form_and_unknown_form_are_500_with_details(sandbox: Running) -> None:
    cases = [
        ({"patient_uuid": "x"}, "Missing _meta property."),
        ({"_meta": {}}, "Missing _meta property."),
        ({"_meta": {"from": "1"}}, "Missing required field: form"),
        ({"_meta": {"form": "nope"}}, "Form not found: NOPE"),
    ]
    for body, details in cases:
        r = await sandbox.client.post("/api/v2/records", json=body, headers={**POST_JSON, **ADMIN_AUTH})
        assert r.status_code == 500
        assert r.json() == {"code": 500, "error": "Server error", "details": details}


async def test_errors_render_as_text_without_json_accept(sandbox: Running) -> None:
    r = await sandbox.client.post(
        "/api/v2/records",
        json={"_meta": {"form": "nope"}},
        headers={**ADMIN_AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == 'Server error: "Form not found: NOPE"'


async def test_malformed_json_and_unsupported_content_type_are_bare_500(sandbox: Running) -> None:
    r = await sandbox.client.post(
        "/api/v2/records", content=b"{not json", headers={**POST_JSON, **ADMIN_AUTH}
    )
    assert r.status_code == 500
    assert r.json() == {"code": 500, "error": "Server error"}
    r = await sandbox.client.post(
        "/api/v2/records", content=b"hello", headers={**JSON, **ADMIN_AUTH, "Content-Type": "text/plain"}
    )
    assert r.status_code == 500
    assert r.json() == {"code": 500, "error": "Server error"}


async def test_field_problems_are_stored_in_the_doc_not_failed(sandbox: Running) -> None:
    settings = {
        "forms": {
            "T": {
                "meta": {"code": "T"},
                "fields": {
                    "name": {"type": "string", "required": True},
                    "age": {"type": "integer"},
                    "ok": {"type": "boolean"},
                    "a.b": {"type": "string"},
                },
            }
        }
    }
    r = await sandbox.client.put("/api/v1/settings", json=settings, headers={**POST_JSON, **ADMIN_AUTH})
    assert r.status_code == 200
    r = await sandbox.client.post(
        "/api/v2/records",
        json={"_meta": {"form": "t"}, "age": "old", "ok": 1, "A.B": "nested"},
        headers={**POST_JSON, **ADMIN_AUTH},
    )
    assert r.status_code == 200
    doc = await _stored(sandbox, r.json()["id"])
    assert [e["code"] for e in doc["errors"]] == ["sys.missing_fields", "sys.incorrect_type"]
    assert doc["fields"] == {"age": "old", "ok": True, "a": {"b": "nested"}}


async def test_user_without_can_create_records_is_403(sandbox: Running) -> None:
    await build_world(sandbox.client)
    await sandbox.client.post(
        "/api/v2/users",
        json={"username": "analyst", "password": "Analyst-pw-2024!", "roles": ["analytics"]},
        headers={**POST_JSON, **ADMIN_AUTH},
    )
    from tests.sandbox.conftest import basic

    r = await sandbox.client.post(
        "/api/v2/records",
        json={"_meta": {"form": "interop_follow_up"}},
        headers={**POST_JSON, **basic("analyst", "Analyst-pw-2024!")},
    )
    assert r.status_code == 403
    assert r.json() == {"code": 403, "error": "Insufficient privileges"}


async def test_offline_chw_can_create_records(sandbox: Running) -> None:
    world = await build_world(sandbox.client)
    r = await sandbox.client.post(
        "/api/v2/records",
        json={"_meta": {"form": "interop_follow_up"}, "patient_uuid": world.patient},
        headers={**POST_JSON, **world.chw_auth},
    )
    assert r.status_code == 200 and r.json()["success"] is True


async def test_sms_path_needs_from_and_message(sandbox: Running) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded", **JSON, **ADMIN_AUTH}
    r = await sandbox.client.post("/api/v2/records", content=b"message=HELLO", headers=form)
    assert r.status_code == 500 and r.json()["details"] == "Missing required value: from"
    r = await sandbox.client.post("/api/v2/records", content=b"from=%2B2547", headers=form)
    assert r.status_code == 500 and r.json()["details"] == "Missing required field: message"
    r = await sandbox.client.post(
        "/api/v2/records", content=b"from=%2B2547&message=interop_follow_up+x", headers=form
    )
    assert r.status_code == 200
    doc = await _stored(sandbox, r.json()["id"])
    assert doc["form"] == "INTEROP_FOLLOW_UP"


async def test_bodies_over_32_mib_are_413(sandbox: Running) -> None:
    body = b'{"_meta": {"form": "interop_follow_up"}, "x": "' + b"a" * (32 * 1024 * 1024) + b'"}'
    r = await sandbox.client.post("/api/v2/records", content=body, headers={**POST_JSON, **ADMIN_AUTH})
    assert r.status_code == 413
    assert r.json() == {"code": 413, "error": "Payload Too Large"}


async def test_non_string_form_is_a_bare_500(sandbox: Running) -> None:
    r = await sandbox.client.post(
        "/api/v2/records", json={"_meta": {"form": 7}}, headers={**POST_JSON, **ADMIN_AUTH}
    )
    assert r.status_code == 500 and r.json() == {"code": 500, "error": "Server error"}
