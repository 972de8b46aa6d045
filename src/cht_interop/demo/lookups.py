"""The demo's searches on the interop API's FHIR side, a hundred resources a request."""

from __future__ import annotations

from cht_interop.client import AsyncInteropClient

CHT_SYSTEM = "cht"  # the identifier system of a patient's CHT id (the CHT's outbound push)
FOLLOW_UP_TOKEN = "urn:cht-interop:follow-up|"  # a follow-up's Task identifier, as a search token
FOLLOW_UP_SEARCH = f"Task?identifier={FOLLOW_UP_TOKEN}"
CHUNK = 100


async def known_patients(client: AsyncInteropClient, cht_ids: list[str]) -> set[str]:
    """Which of these CHT patients the interop API has (the CHT has pushed them)."""
    known: set[str] = set()
    for start in range(0, len(cht_ids), CHUNK):
        chunk = cht_ids[start : start + CHUNK]
        response = await client.http.get(
            "/fhir/Patient",
            params={
                "identifier": ",".join(f"{CHT_SYSTEM}|{p}" for p in chunk),
                "_count": str(len(chunk)),
                "_elements": "identifier",
            },
        )
        response.raise_for_status()
        for entry in response.json().get("entry") or []:
            for identifier in (entry.get("resource") or {}).get("identifier") or []:
                if identifier.get("system") == CHT_SYSTEM:
                    known.add(str(identifier.get("value")))
    return known


async def task_statuses(client: AsyncInteropClient, links: list[str]) -> dict[str, str]:
    """Task link (``Task/<id>``, or a staged list's ``Task?identifier=…|<follow-up id>``) → the
    Task's status, for the Tasks that exist."""
    by_id = {link.removeprefix("Task/"): link for link in links if not link.startswith("Task?")}
    by_follow_up = {
        link.removeprefix(FOLLOW_UP_SEARCH): link for link in links if link.startswith(FOLLOW_UP_SEARCH)
    }
    found: dict[str, str] = {}
    for param, wanted, token in (("_id", by_id, ""), ("identifier", by_follow_up, FOLLOW_UP_TOKEN)):
        keys = sorted(wanted)
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            response = await client.http.get(
                "/fhir/Task",
                params={
                    param: ",".join(f"{token}{k}" for k in chunk),
                    "_count": str(len(chunk)),
                    "_elements": "status,identifier",
                },
            )
            response.raise_for_status()
            for entry in response.json().get("entry") or []:
                task = entry.get("resource") or {}
                key = str(task.get("id"))
                if param == "identifier":
                    key = next(
                        (
                            str(i.get("value"))
                            for i in task.get("identifier") or []
                            if i.get("system") == token.rstrip("|")
                        ),
                        "",
                    )
                if key in wanted:
                    found[wanted[key]] = str(task.get("status"))
    return found


async def count_with_status(client: AsyncInteropClient, sr_ids: list[str], status: str) -> int:
    """How many of these ServiceRequests have this status (searched by status, ``_summary=count``)."""
    total = 0
    for start in range(0, len(sr_ids), CHUNK):
        response = await client.http.get(
            "/fhir/ServiceRequest",
            params={"_id": ",".join(sr_ids[start : start + CHUNK]), "status": status, "_summary": "count"},
        )
        response.raise_for_status()
        total += int(response.json().get("total") or 0)
    return total
