"""The console's read pages: dashboard, follow-ups, LTFU lists, subscriptions, clients, transactions.

Thin: each page asks ``followups``, ``queries`` or ``peers`` and renders; nothing here writes.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from cht_interop.console import followups, peers, queries
from cht_interop.console.timeline import timeline
from cht_interop.console.web import Refused, render, require_admin, services
from cht_interop.fhir.errors import FhirError
from cht_interop.gateway.principals import Principal
from cht_interop.ltfu import resources as R
from cht_interop.ltfu.writes import job_ordering_key

router = APIRouter()
Admin = Annotated[Principal, Depends(require_admin)]
PAGE_SIZE = 50


@router.get("/", name="dashboard")
async def dashboard(request: Request, _admin: Admin) -> Response:
    s = services(request)

    async def outbox() -> queries.Backlog:
        async with s.db.connect() as conn:
            return await queries.backlog(conn)

    async def counts() -> followups.Summary | str:
        try:
            return await followups.summary(s.fhir)
        except FhirError as exc:
            return f"The FHIR backend did not answer the counts: {exc}"

    backlog, summary, *states = await asyncio.gather(
        outbox(),
        counts(),
        peers.database(s.db),
        peers.fhir_backend(s.fhir, s.settings),
        peers.cht(s.settings, s.http),
    )
    openhim = peers.openhim(s.settings, s.openhim.details() if s.openhim is not None else None)
    return render(
        request,
        "dashboard.html",
        section="dashboard",
        backlog=backlog,
        summary=summary,
        peers=[*states, openhim],
        statuses=followups.TASK_STATUSES,
        outcomes=R.OUTCOME_LABELS,
    )


@router.get("/follow-ups", name="follow_ups")
async def follow_up_list(
    request: Request,
    _admin: Admin,
    status: str = "",
    outcome: str = "",
    requester: str = "",
    patient: str = "",
    since: str = "",
    until: str = "",
    cursor: Annotated[str, Query(max_length=100)] = "",
) -> Response:
    s = services(request)
    filters = followups.Filters(status, outcome, requester.strip(), patient.strip(), since, until)
    problems = filters.problems()
    if cursor and not followups.valid_cursor(cursor):
        problems.append("the page link is damaged: start again from the first page")
    orgs = await followups.organizations(s.fhir)
    if problems:
        return render(
            request, "follow_ups.html", 400, section="follow-ups", filters=filters, page=None,
            problems=problems, orgs=orgs, statuses=followups.TASK_STATUSES, outcomes=R.OUTCOME_LABELS,
        )  # fmt: skip
    page = await followups.page(s.fhir, filters, cursor=cursor or None, size=PAGE_SIZE)
    return render(
        request, "follow_ups.html", section="follow-ups", filters=filters, page=page, problems=[],
        orgs=orgs, org_names=dict(orgs), statuses=followups.TASK_STATUSES, outcomes=R.OUTCOME_LABELS,
        cursor=cursor,
    )  # fmt: skip


@router.get("/follow-ups/{task_id}", name="follow_up")
async def follow_up(request: Request, _admin: Admin, task_id: str) -> Response:
    s = services(request)
    found = await followups.load(s.fhir, task_id)
    if found is None:
        raise Refused(404, "Not found", f"There is no follow-up with Task id {task_id!r}.")
    keys = [job_ordering_key(found.follow_up_id)]
    if found.subscription is not None:
        keys.append(f"Subscription/{found.subscription['id']}")
    async with s.db.connect() as conn:
        jobs = await queries.jobs_for_keys(conn, keys)
    return render(
        request,
        "follow_up.html",
        section="follow-ups",
        f=found,
        events=timeline(found, jobs),
        jobs=jobs,
        patient_label=followups.patient_label(found.patient),
        outcomes=R.OUTCOME_LABELS,
    )


@router.get("/lists", name="lists")
async def ltfu_lists(
    request: Request, _admin: Admin, before: Annotated[datetime | None, Query()] = None
) -> Response:
    async with services(request).db.connect() as conn:
        lists = await queries.ltfu_lists(conn, before=before, limit=PAGE_SIZE)
    more = len(lists) == PAGE_SIZE
    return render(request, "lists.html", section="lists", lists=lists, more=more)


@router.get("/lists/{list_id}", name="ltfu_list")
async def ltfu_list(request: Request, _admin: Admin, list_id: str, after: int = -1) -> Response:
    async with services(request).db.connect() as conn:
        header, entries = await queries.ltfu_list_entries(conn, list_id, after_position=after, limit=200)
    if header is None:
        raise Refused(404, "Not found", f"There is no LTFU list {list_id!r} (finished lists are purged).")
    return render(
        request, "list.html", section="lists", lst=header, entries=entries, more=len(entries) == 200
    )


@router.get("/subscriptions", name="subscriptions")
async def subscriptions(request: Request, _admin: Admin, status: str = "") -> Response:
    if status and status not in ("requested", "active", "error", "off"):
        raise Refused(400, "Bad request", f"unknown Subscription status {status!r}")
    params = [("_sort", "-_lastUpdated"), ("_count", "100")]
    if status:
        params.append(("status", status))
    bundle = await services(request).fhir.search("Subscription", params)
    subs = [e["resource"] for e in bundle.get("entry") or []]
    return render(request, "subscriptions.html", section="subscriptions", subs=subs, sub_status=status)
