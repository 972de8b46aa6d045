"""The CHT side of the demo, over the CHT API as an administrator and the CHWs use it.

Places, CHW users and patients go in through ``/api/v1/places``, ``/api/v2/users`` and
``/api/v1/people`` (the CHT's outbound push then hands each patient to the interop API). The CHWs
play through the sandbox's CHW page: their task list (``/sandbox/api/tasks``) and the follow-up
form (``POST /sandbox/chw/tasks/<id>``), which writes the report as the CHT app does.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
OPEN_STATES = ("Draft", "Ready")
# The sandbox computes a CHW's tasks synchronously, over every document: more CHWs asking at once
# only queue up behind each other and slow down the CHT's pushes running beside them.
CHWS_AT_ONCE = 2


class ChtError(RuntimeError):
    """The CHT (sandbox) refused a step of the demo."""


@dataclass(slots=True)
class Chw:
    """A CHW user, the place they cover, and the patients they follow up."""

    username: str
    password: str
    place_id: str
    clinic_id: str
    patients: list[str] = field(default_factory=list)
    csrf: str | None = None

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)


@dataclass(frozen=True, slots=True)
class Patient:
    cht_id: str
    name: str
    chw: str


class ChtWorld:
    """Builds the demo's CHT world and plays its CHWs."""

    def __init__(self, http: httpx.AsyncClient, admin: tuple[str, str], *, tag: str) -> None:
        self.http = http
        self.admin = admin
        self.tag = tag  # makes names and user names unique to this run (a shared `up` keeps them)
        self._chw_gate = asyncio.Semaphore(CHWS_AT_ONCE)

    async def _post(self, path: str, body: Any, auth: tuple[str, str]) -> Any:
        response = await self.http.post(path, json=body, auth=auth)
        if response.status_code not in (200, 201):
            raise ChtError(f"POST {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json()

    async def place(self, name: str, kind: str, parent: str | None = None) -> str:
        body: dict[str, Any] = {"name": name, "type": kind}
        if parent:
            body["parent"] = parent
        return str((await self._post("/api/v1/places", body, self.admin))["id"])

    async def district(self) -> str:
        return await self.place(f"Demo district {self.tag}", "district_hospital")

    async def chw(self, district: str, number: int) -> Chw:
        """A health centre, its CHW user, and a clinic (household) for the patients."""
        area = await self.place(f"Demo area {self.tag}-{number}", "health_center", district)
        username = f"chw-{self.tag}-{number}"
        password = f"Demo-{secrets.token_urlsafe(12)}-1"
        await self._post(
            "/api/v2/users",
            {
                "username": username,
                "password": password,
                "roles": ["chw"],
                "place": area,
                "contact": {"name": f"CHW {number}", "type": "person", "role": "chw"},
            },
            self.admin,
        )
        clinic = await self.place(f"Demo household {self.tag}-{number}", "clinic", area)
        return Chw(username, password, area, clinic)

    async def patient(self, chw: Chw, number: int) -> Patient:
        name = f"Patient {self.tag}-{number:04d}"
        body = {
            "name": name,
            "type": "person",
            "role": "patient",
            "contact_type": "patient",
            "sex": "female" if number % 2 else "male",
            "date_of_birth": f"{1960 + number % 40}-0{1 + number % 9}-1{number % 10}",
            "place": chw.clinic_id,
        }
        cht_id = str((await self._post("/api/v1/people", body, self.admin))["id"])
        chw.patients.append(cht_id)
        return Patient(cht_id, name, chw.username)

    # -- the CHWs at work --------------------------------------------------------------------------

    async def open_tasks(self, chw: Chw) -> list[dict[str, Any]]:
        """The CHW's follow-up tasks still to do (their app's task list)."""
        async with self._chw_gate:
            response = await self.http.get("/sandbox/api/tasks", params={"user": chw.username}, auth=chw.auth)
        if response.status_code != 200:
            raise ChtError(f"tasks of {chw.username}: HTTP {response.status_code} {response.text[:300]}")
        return [t for t in response.json().get("tasks", []) if t.get("state") in OPEN_STATES]

    async def complete(self, chw: Chw, task_id: str, *, outcome: str, method: str, notes: str) -> None:
        """Fill in and submit the follow-up form of this task, as the CHW does on the CHW page."""
        if chw.csrf is None:
            page = await self.http.get("/sandbox/chw", auth=chw.auth)
            found = _CSRF.search(page.text)
            if page.status_code != 200 or found is None:
                raise ChtError(f"the CHW page of {chw.username} did not open (HTTP {page.status_code})")
            chw.csrf = found.group(1)
        async with self._chw_gate:
            response = await self.http.post(
                f"/sandbox/chw/tasks/{quote(task_id, safe='')}",
                data={"csrf": chw.csrf, "outcome": outcome, "method": method, "notes": notes},
                auth=chw.auth,
            )
        if response.status_code != 303 or "done=" not in response.headers.get("location", ""):
            raise ChtError(f"the follow-up form of {task_id} was refused (HTTP {response.status_code})")
