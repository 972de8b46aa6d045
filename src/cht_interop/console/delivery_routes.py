"""Deliveries: the outbox by tab (failing, waiting, dead, delivered), one job's attempts, and the two
things a person does to it: retry a dead job, discard a dead or failing one (with a reason), purge
delivered ones (the outbox's own functions, as ``cht-interop outbox retry/purge`` call them)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from cht_interop.console import queries
from cht_interop.console.web import Refused, checked_form, path_for, render, require_admin, services
from cht_interop.delivery import outbox
from cht_interop.delivery.outbox.admin import JobNotDiscardable, discard
from cht_interop.gateway.principals import Principal

router = APIRouter()
Admin = Annotated[Principal, Depends(require_admin)]
PAGE_SIZE = 50
NOTICES = {
    "retried": "Job {job} is waiting again: the worker delivers it at its next poll.",
    "purged": "{count} delivered job(s) deleted.",
    "discarded": "Job {job} is discarded: the worker will not try it again.",
}


@router.get("/deliveries", name="deliveries")
async def deliveries(
    request: Request,
    _admin: Admin,
    view: str = "failing",
    before: int | None = None,
    notice: str = "",
    job: int | None = None,
    count: int | None = None,
) -> Response:
    if view not in queries.DELIVERY_VIEWS:
        raise Refused(
            400, "Bad request", f"unknown view {view!r}: one of {', '.join(queries.DELIVERY_VIEWS)}"
        )
    async with services(request).db.connect() as conn:
        backlog = await queries.backlog(conn)
        jobs = await queries.deliveries(conn, view, before_id=before, limit=PAGE_SIZE)
    shown = NOTICES[notice].format(job=job, count=count) if notice in NOTICES else None
    return render(
        request,
        "deliveries.html",
        section="deliveries",
        view=view,
        views=queries.DELIVERY_VIEWS,
        jobs=jobs,
        backlog=backlog,
        notice=shown,
        next_before=jobs[-1].id if len(jobs) == PAGE_SIZE else None,
    )


@router.get("/deliveries/{job_id}", name="delivery")
async def delivery(request: Request, _admin: Admin, job_id: int, notice: str = "") -> Response:
    async with services(request).db.connect() as conn:
        record = await outbox.get_job(conn, job_id)
    if record is None:
        raise Refused(404, "Not found", f"There is no delivery job {job_id}.")
    shown = NOTICES[notice].format(job=job_id, count=None) if notice in NOTICES else None
    return render(request, "delivery.html", section="deliveries", job=record, notice=shown)


@router.post("/deliveries/{job_id}/retry", name="retry_delivery")
async def retry(
    request: Request, _admin: Admin, job_id: int, _form: Annotated[FormData, Depends(checked_form)]
) -> Response:
    try:
        async with services(request).db.transaction() as conn:
            await outbox.retry_dead(conn, job_id)
    except outbox.JobNotFound:
        raise Refused(404, "Not found", f"There is no delivery job {job_id}.") from None
    except outbox.JobNotRetryable as exc:
        raise Refused(
            409, "Not retried", f"Job {job_id} is {exc.status}: only a dead job can be retried."
        ) from None
    target = path_for(request, "delivery", {"notice": "retried"}, job_id=job_id)
    return RedirectResponse(target, status_code=303)


@router.post("/deliveries/{job_id}/discard", name="discard_delivery")
async def discard_job(
    request: Request, admin: Admin, job_id: int, form: Annotated[FormData, Depends(checked_form)]
) -> Response:
    reason = str(form.get("reason") or "").strip()
    if not reason:
        raise Refused(400, "Not discarded", "Say why the job is discarded: the reason is kept with it.")
    try:
        async with services(request).db.transaction() as conn:
            await discard(conn, job_id, reason=reason, by=admin.client_id)
    except outbox.JobNotFound:
        raise Refused(404, "Not found", f"There is no delivery job {job_id}.") from None
    except JobNotDiscardable as exc:
        raise Refused(409, "Not discarded", f"Job {job_id} is {exc.status}: {exc.why}.") from None
    target = path_for(request, "delivery", {"notice": "discarded"}, job_id=job_id)
    return RedirectResponse(target, status_code=303)


@router.post("/deliveries/purge", name="purge_deliveries")
async def purge(
    request: Request, _admin: Admin, form: Annotated[FormData, Depends(checked_form)]
) -> Response:
    try:
        days = float(str(form.get("older_than_days") or ""))
    except ValueError:
        days = -1
    if not 0 <= days <= 3650:
        raise Refused(400, "Bad request", "older than: a number of days between 0 and 3650")
    cutoff = outbox.utcnow() - timedelta(days=days)
    async with services(request).db.transaction() as conn:
        deleted = await outbox.purge_done(conn, finished_before=cutoff)
    target = path_for(request, "deliveries", {"view": "done", "notice": "purged", "count": deleted})
    return RedirectResponse(target, status_code=303)
