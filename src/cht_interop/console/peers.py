"""The state of each peer the system depends on, checked live when the dashboard is opened.

Each check is bounded (``TIMEOUT``) and run at once with the others, so a peer that hangs costs the
page a few seconds, never forever; a check reports, it never raises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import text

from cht_interop.cht.client import ChtClient, ChtError
from cht_interop.db import Database
from cht_interop.fhir.client import FhirClient
from cht_interop.fhir.errors import FhirError
from cht_interop.settings import Settings

TIMEOUT = 5.0


@dataclass(frozen=True)
class PeerState:
    name: str
    ok: bool | None  # None: not configured / not applicable
    summary: str  # one line for the dashboard
    details: dict[str, Any]


async def _timed(check: Callable[[], Awaitable[str]]) -> tuple[bool, str, float]:
    start = time.perf_counter()
    try:
        said = await asyncio.wait_for(check(), timeout=TIMEOUT)
        ok = True
    except TimeoutError:
        said, ok = f"no answer within {TIMEOUT:.0f} s", False
    except (FhirError, ChtError, httpx.HTTPError, OSError) as exc:
        said, ok = f"{type(exc).__name__}: {exc}"[:300], False
    except Exception as exc:  # a status page reports whatever went wrong
        said, ok = f"{type(exc).__name__}: {exc}"[:300], False
    return ok, said, (time.perf_counter() - start) * 1000


async def database(db: Database) -> PeerState:
    async def check() -> str:
        async with db.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return "answers"

    ok, said, ms = await _timed(check)
    return PeerState("Database", ok, f"{db.dialect}: {said}", {"round trip": f"{ms:.0f} ms"})


async def fhir_backend(fhir: FhirClient, settings: Settings) -> PeerState:
    where = f"external server {settings.fhir_url}" if settings.fhir_url else "embedded store"

    async def check() -> str:
        bundle = await fhir.search("Task", [("_summary", "count")])
        total = bundle.get("total")
        return "answers" if total is None else f"answers ({total} Task{'' if total == 1 else 's'} stored)"

    ok, said, ms = await _timed(check)
    return PeerState("FHIR backend", ok, f"{where}: {said}", {"round trip": f"{ms:.0f} ms"})


async def cht(settings: Settings, http: httpx.AsyncClient) -> PeerState:
    if not settings.cht_url:
        return PeerState("CHT", None, "not configured (CHT_URL unset)", {})
    password = settings.cht_password.get_secret_value() if settings.cht_password else ""
    client = ChtClient(settings.cht_url, settings.cht_username, password, http)

    async def check() -> str:
        response = await client.request("GET", "/api/v1/settings")
        if response.status_code in (401, 403):
            raise ChtError(f"reachable, but refuses our user ({response.status_code})")
        if response.status_code != 200:
            raise ChtError(f"answered {response.status_code}")
        return "reachable, our user is accepted"

    ok, said, ms = await _timed(check)
    return PeerState("CHT", ok, f"{client.base_url}: {said}", {"round trip": f"{ms:.0f} ms"})


def openhim(settings: Settings, details: dict[str, Any] | None) -> PeerState:
    """From the heartbeat loop's own state (no call made here: the loop calls every few seconds)."""
    if not settings.openhim_api_url:
        return PeerState("OpenHIM", None, "not configured (OPENHIM_API_URL unset)", {})
    if details is None:
        return PeerState("OpenHIM", False, "configured, but the heartbeat has not started", {})
    # registered: this replica heartbeats; standby: another replica does (PostgreSQL)
    ok = details.get("state") in ("registered", "standby")
    summary = f"{details.get('state')}; registered: {'yes' if details.get('registered') else 'no'}"
    shown = {
        "last heartbeat": details.get("last_heartbeat") or "never",
        "authentication": details.get("auth_scheme") or "-",
        "failures in a row": details.get("failures"),
    }
    if details.get("last_error"):
        shown["last error"] = details["last_error"]
    return PeerState("OpenHIM", ok, summary, shown)
