"""``POST /api/v1/people`` and ``/api/v1/places`` (cht-core shared-libs/contacts)."""

from __future__ import annotations

from tests.sandbox.conftest import ADMIN_AUTH, JSON, POST_JSON, Running
from tests.sandbox.helpers import build_world


async def _post(sandbox: Running, path: str, body: object, headers: dict[str, str] | None = None):
    return await sandbox.client.post(path, json=body, headers=headers or {**POST_JSON, **ADMIN_AUTH})


async def test_places_hierarchy_and_person_with_lineage(sandbox: Running) -> None:
    world = await build_world(sandbox.client)
    r = await sandbox.client.get(f"/medic/{world.patient}", headers={**JSON, **ADMIN_AUTH})
    patient = r.json()
    assert patient["type"] == "person" and patient["role"] == "patient"
    assert patient["parent"] == {
        "_id": world.clinic,
        "parent": {"_id": world.health_center, "parent": {"_id": world.district}},
    }
    assert "place" not in patient
    assert isinstance(patient["reported_date"], int)


async def test_people_response_is_ok_id_rev(sandbox: Running) -> None:
    r = await _post(sandbox, "/api/v1/people", {"name": "Solo", "reported_date": "2024-01-02T03:04:05+03:00"})
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True and body["rev"].startswith("1-") and set(body) == {"ok", "id", "rev"}
    doc = (await sandbox.client.get(f"/medic/{body['id']}", headers={**JSON, **ADMIN_AUTH})).json()
    assert doc["type"] == "person"
    assert doc["reported_date"] == 1704153845000


async def test_content_type_must_be_exactly_application_json(sandbox: Running) -> None:
    for path in ("/api/v1/people", "/api/v1/places"):
        r = await sandbox.client.post(
            path,
            content=b'{"name": "x"}',
            headers={**JSON, **ADMIN_AUTH, "Content-Type": "application/json; charset=utf-8"},
        )
        assert r.status_code == 400
        assert r.json() == {"code": 400, "error": "Content-Type must be application/json"}


async def test_people_errors(sandbox: Running) -> None:
    cases = [
        ({}, 400, "Request body is empty or Content-Type header was not set to application/json."),
        ({"type": "clinic", "name": "x"}, 400, "Wrong type, this is not a person."),
        ({"type": "person"}, 400, 'Person is missing a "name" property.'),
        ({"name": 3}, 400, 'Property "name" must be a string.'),
        ({"name": "x", "reported_date": "yesterday"}, 400, "Reported date is invalid: yesterday"),
        ({"name": "x", "place": "no-such-place"}, 404, "Failed to find place."),
        (
            {"name": "x", "place": {"_id": "p", "_rev": "1-a", "type": "clinic"}},
            400,
            "Place must be a new object or string identifier (UUID).",
        ),
    ]
    for body, status, message in cases:
        r = await _post(sandbox, "/api/v1/people", body)
        assert r.status_code == status, (body, r.text)
        assert r.json() == {"code": status, "error": message}


async def test_places_errors(sandbox: Running) -> None:
    district = (await _post(sandbox, "/api/v1/places", {"name": "D", "type": "district_hospital"})).json()[
        "id"
    ]
    cases = [
        ({"name": "x", "type": "person"}, 400, "Wrong type, object  is not a place."),
        ({"type": "clinic"}, 400, 'Place  is missing a "name" property.'),
        ({"name": 1, "type": "district_hospital"}, 400, 'Property "name" on place  must be a string.'),
        ({"name": "x", "type": "clinic"}, 400, 'Place  is missing a "parent" property.'),
        (
            {"name": "x", "type": "clinic", "parent": district},
            400,
            'clinic "" should have one of the following parent types: "health_center".',
        ),
        ({"name": "x", "type": "health_center", "parent": "missing"}, 404, "Failed to find place."),
    ]
    for body, status, message in cases:
        r = await _post(sandbox, "/api/v1/places", body)
        assert r.status_code == status, (body, r.text)
        assert r.json() == {"code": status, "error": message}


async def test_place_with_new_parent_and_new_contact(sandbox: Running) -> None:
    r = await _post(
        sandbox,
        "/api/v1/places",
        {
            "name": "HC",
            "type": "health_center",
            "parent": {"name": "D", "type": "district_hospital"},
            "contact": {"name": "Nurse", "type": "person"},
        },
    )
    assert r.status_code == 200
    body = r.json()
    place = (await sandbox.client.get(f"/medic/{body['id']}", headers={**JSON, **ADMIN_AUTH})).json()
    assert place["contact"]["_id"] == body["contact"]["id"]
    assert place["_rev"] == body["rev"]
    contact = (
        await sandbox.client.get(f"/medic/{body['contact']['id']}", headers={**JSON, **ADMIN_AUTH})
    ).json()
    assert contact["parent"]["_id"] == body["id"]
    assert contact["parent"]["parent"]["_id"] == place["parent"]["_id"]


async def test_offline_chw_may_create_people_and_places(sandbox: Running) -> None:
    world = await build_world(sandbox.client)  # the CHW creates the clinic and the patient
    assert world.patient and world.clinic


async def test_user_without_permissions_is_403(sandbox: Running) -> None:
    await sandbox.client.post(
        "/api/v2/users",
        json={"username": "gw", "password": "Gateway-pw-2024!", "roles": ["gateway"]},
        headers={**POST_JSON, **ADMIN_AUTH},
    )
    from tests.sandbox.conftest import basic

    r = await _post(
        sandbox, "/api/v1/people", {"name": "x"}, {**POST_JSON, **basic("gw", "Gateway-pw-2024!")}
    )
    assert r.status_code == 403
    assert r.json() == {"code": 403, "error": "Insufficient privileges"}


async def test_ids_are_v4_uuids_as_pouchdb_post_assigns_them(sandbox: Running) -> None:
    import uuid

    r = await _post(sandbox, "/api/v1/people", {"name": "Uuid"})
    assert uuid.UUID(r.json()["id"]).version == 4 and "-" in r.json()["id"]
    r = await _post(sandbox, "/api/v1/places", {"name": "D", "type": "district_hospital"})
    assert uuid.UUID(r.json()["id"]).version == 4 and "-" in r.json()["id"]
