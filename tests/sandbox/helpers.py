"""Small builders used by several sandbox tests: a place hierarchy, a CHW, a patient."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from tests.sandbox.conftest import ADMIN_AUTH, POST_JSON, basic

CHW_PASSWORD = "Chw-Sandbox-pw-42!"


@dataclass
class World:
    district: str
    health_center: str
    clinic: str
    chw_name: str
    chw_contact: str
    patient: str

    @property
    def chw_auth(self) -> dict[str, str]:
        return basic(self.chw_name, CHW_PASSWORD)


async def post(client: httpx.AsyncClient, path: str, body: object, auth: dict[str, str] = ADMIN_AUTH) -> dict:
    response = await client.post(path, json=body, headers={**POST_JSON, **auth})
    assert response.status_code in (200, 201), (path, response.status_code, response.text)
    return response.json()


async def build_world(client: httpx.AsyncClient, *, chw_name: str = "chw1") -> World:
    """district > health centre > clinic, a CHW user on the health centre, a patient in the clinic."""
    district = (await post(client, "/api/v1/places", {"name": "District", "type": "district_hospital"}))["id"]
    hc = (await post(client, "/api/v1/places", {"name": "HC", "type": "health_center", "parent": district}))[
        "id"
    ]
    user = await post(
        client,
        "/api/v2/users",
        {
            "username": chw_name,
            "password": CHW_PASSWORD,
            "roles": ["chw"],
            "place": hc,
            "contact": {"name": "Chw One", "type": "person", "role": "chw", "phone": "+254700000001"},
        },
    )
    chw_auth = basic(chw_name, CHW_PASSWORD)
    clinic = (
        await post(client, "/api/v1/places", {"name": "Clinic", "type": "clinic", "parent": hc}, chw_auth)
    )["id"]
    patient = (
        await post(
            client,
            "/api/v1/people",
            {
                "name": "Pat Ient",
                "type": "person",
                "role": "patient",
                "contact_type": "patient",
                "sex": "female",
                "date_of_birth": "1990-04-01",
                "place": clinic,
            },
            chw_auth,
        )
    )["id"]
    return World(district, hc, clinic, chw_name, user["contact"]["id"], patient)
