"""Where every LTFU transaction opens: FHIR transaction Bundles and our own database's writes.

A follow-up's writes must commit whole or not at all: the ServiceRequest, its Task, its
Subscription and the job that sends the CHT its record go in one FHIR transaction (one database
transaction in-process) before the client hears 201. Every such write in ``ltfu`` opens here:
``fhir_transaction`` (Bundles, with the outbox jobs that follow from them) and ``db_transaction``
(staged lists and outbox jobs in our own database). The steps decide what to write; this module
is the one place that knows how a write is opened, and what the follow-up start writes.

The outbox job kinds the LTFU writes enqueue are named here too (``jobs.py`` handles them).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db import Database
from cht_interop.delivery.jobs import NewJob
from cht_interop.delivery.outbox import enqueue
from cht_interop.fhir.client import FhirClient, Resource, WriteResult
from cht_interop.fhir.errors import FhirError
from cht_interop.fhir.validation import check_resource
from cht_interop.ltfu import resources as R
from cht_interop.ltfu import validation as V
from cht_interop.ltfu.model import FollowUp, Pending, failed
from cht_interop.settings import Settings

CHT_RECORD_JOB = "cht.record"
EXPIRY_JOB = "ltfu.follow-up-expiry"
SUBSCRIPTION_OFF_JOB = "ltfu.subscription-off"
LIST_WRITE_JOB = "ltfu.list-write"
LIST_PURGE_JOB = "ltfu.list-purge"


def job_ordering_key(follow_up_id: str) -> str:
    """Follow-up record and cancel record of one follow-up go to the CHT in that order."""
    return f"ltfu:{follow_up_id}"


def subscription_off_job(task: Resource) -> NewJob:
    """Switch the follow-up's Subscription off once the notifications already queued for it are out.

    The notification for the completing Encounter was queued in the Encounter's own write; a job
    with the same ordering key as the Subscription's notifications runs after them, so that one is
    still delivered while any later match finds the Subscription off.
    """
    sub_id = R.task_subscription_id(task)
    return NewJob(
        kind=SUBSCRIPTION_OFF_JOB,
        target=f"Subscription/{sub_id}",
        payload={"subscription_id": sub_id, "task_id": task.get("id")},
        ordering_key=f"Subscription/{sub_id}",
    )


def put(resource: Resource) -> Resource:
    """A transaction entry that updates ``resource``, conditional on the version it was read at."""
    rtype, rid = resource["resourceType"], resource["id"]
    request: dict[str, Any] = {"method": "PUT", "url": f"{rtype}/{rid}"}
    version = (resource.get("meta") or {}).get("versionId")
    if version:
        request["ifMatch"] = f'W/"{version}"'
    return {"fullUrl": f"{rtype}/{rid}", "resource": resource, "request": request}


def etag(resource: Resource) -> str | None:
    """The ``If-Match`` for an update of ``resource`` as read (None: no version known)."""
    version = (resource.get("meta") or {}).get("versionId")
    return f'W/"{version}"' if version else None


async def upsert_by_identifier(
    fhir: FhirClient, resource: Resource, identifier: dict[str, Any]
) -> WriteResult:
    """Create ``resource`` unless one with this identifier exists; else update that one (200).
    A conditional create then a plain update: one resource, no transaction needed."""
    rtype = resource["resourceType"]
    token = V.identifier_token(identifier)
    result = await fhir.create(dict(resource), if_none_exist=f"identifier={token}")
    if result.created:
        return result
    existing = result.resource
    return await fhir.update({**resource, "id": existing["id"], "resourceType": rtype})


class LtfuWrites:
    """Opens the LTFU transactions, on the FHIR server and in our own database."""

    def __init__(self, fhir: FhirClient, settings: Settings, db: Database) -> None:
        self.fhir = fhir
        self.settings = settings
        self.db = db  # staged lists and the outbox: always our own database, whatever the FHIR server

    # -- opening a write ---------------------------------------------------------------------------

    async def fhir_transaction(
        self,
        entries: list[Resource],
        *,
        jobs: Sequence[NewJob] = (),
        trusted: Collection[str] = (),
        handover: bool = False,
    ) -> Resource:
        """One FHIR transaction Bundle of ``entries``, with the outbox ``jobs`` that follow from it
        (see ``FhirClient.transaction`` for ``trusted`` and ``handover``)."""
        return await self.fhir.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries},
            jobs=jobs,
            trusted=trusted,
            handover=handover,
        )

    @asynccontextmanager
    async def db_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction in our own database (staged lists, outbox jobs, the start lock), committed
        when the block ends without an error."""
        async with self.db.transaction() as conn:
            yield conn

    async def enqueue(self, jobs: Sequence[NewJob], *, due: datetime | None = None) -> None:
        """Outbox jobs that follow from no other write (expiries: due when ``due`` comes)."""
        async with self.db_transaction() as conn:
            await enqueue(conn, jobs, now=due)

    # -- the follow-up start ---------------------------------------------------------------------

    def schema_checked(self, request: V.FollowUpRequest) -> V.FollowUpRequest:
        """The request after the R4 check (lenient, HAPI-like; 400 on a bad element), so that its
        ServiceRequest may be written as trusted. A server that does not take trusted writes
        (an external one) checks every entry itself: returned unchanged."""
        if request.schema_checked or not self.fhir.capabilities.trusted_writes:
            return request
        check_resource(request.resource, "ServiceRequest")
        return dataclasses.replace(request, schema_checked=True)

    async def start(self, fresh: list[Pending], results: list[FollowUp | None]) -> None:
        """All new follow-ups in one transaction; if the store refuses it, entry by entry.

        Each client ServiceRequest is checked against R4 first, on its own: one bad entry answers
        400 by itself instead of failing the shared transaction (which would then be retried
        entry by entry), and the store need not check it again.
        """
        checked: list[Pending] = []
        for p in fresh:
            try:
                p.request = self.schema_checked(p.request)
            except FhirError as exc:
                results[p.index] = failed(exc)
            else:
                checked.append(p)
        fresh = checked
        if not fresh:
            return
        try:
            await self._start_transaction(fresh, results)
        except FhirError as exc:
            if len(fresh) == 1:
                results[fresh[0].index] = failed(exc)
            else:
                for p in fresh:
                    try:
                        await self._start_transaction([p], results)
                    except FhirError as one:
                        results[p.index] = failed(one)
        for p in fresh:
            first = results[p.index]
            if first is not None and first.error is not None:
                for dup in p.duplicates:
                    results[dup] = FollowUp(status=first.status, error=first.error)

    async def _start_transaction(self, batch: list[Pending], results: list[FollowUp | None]) -> None:
        """ServiceRequest + Subscription + Task per follow-up and the CHT-record jobs, one transaction."""
        authored = R.now_iso()
        entries: list[Resource] = []
        jobs: list[NewJob] = []
        subscriptions: list[Resource] = []
        trusted: set[str] = set()  # the Subscription and Task are ours; the client's ServiceRequest is not
        for p in batch:
            sr_urn, sub_urn, task_urn = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
            trusted.update((sub_urn, task_urn))
            if p.request.schema_checked:
                trusted.add(sr_urn)  # checked on its own; subject, requester, authoredOn are ours
            # the store writes into what it is handed: a copy keeps the request intact for a retry
            sr = orjson.loads(orjson.dumps(p.request.resource))
            sr["subject"] = {
                "reference": f"Patient/{p.patient['id']}",
                "identifier": {"system": V.CHT_SYSTEM, "value": p.patient_cht_id},
            }
            sr["requester"] = {"reference": f"Organization/{p.requester.id}", "display": p.requester.name}
            sr.setdefault("authoredOn", authored)
            subscription = R.new_subscription(p.patient_cht_id, p.requester.address)
            subscriptions.append(subscription)
            task = R.new_task(
                follow_up_id=p.follow_up_id,
                service_request_ref=sr_urn,
                patient_id=str(p.patient["id"]),
                organization_id=p.requester.id,
                subscription_ref=sub_urn,
                authored=authored,
            )
            entries += [
                {"fullUrl": sr_urn, "resource": sr, "request": {"method": "POST", "url": "ServiceRequest"}},
                {
                    "fullUrl": sub_urn,
                    "resource": subscription,
                    "request": {"method": "POST", "url": "Subscription"},
                },
                {"fullUrl": task_urn, "resource": task, "request": {"method": "POST", "url": "Task"}},
            ]
            record = R.follow_up_record(
                patient_cht_id=p.patient_cht_id,
                reason=R.service_request_reason(sr),
                requester_name=p.requester.name,
                requester_identifier=p.requester.identifier,
            )
            jobs.append(
                NewJob(
                    kind=CHT_RECORD_JOB,
                    target=self.cht_target(),
                    payload={"action": "follow-up", "follow_up": p.follow_up_id, "record": record},
                    ordering_key=job_ordering_key(p.follow_up_id),
                )
            )
        response = await self.fhir_transaction(entries, jobs=jobs, trusted=trusted, handover=True)
        answered = response.get("entry") or []
        if len(answered) != len(entries):
            raise FhirError("the FHIR server answered the transaction with a different number of entries")
        for n, p in enumerate(batch):
            sr_e, sub_e, task_e = answered[3 * n : 3 * n + 3]
            sr_id = R.location_id((sr_e.get("response") or {}).get("location"), "ServiceRequest")
            sub_id = R.location_id((sub_e.get("response") or {}).get("location"), "Subscription")
            task_id = R.location_id((task_e.get("response") or {}).get("location"), "Task")
            stored_sub = sub_e.get("resource")
            if not isinstance(stored_sub, dict):
                # as HAPI answers a create: the Subscription as written, version 1
                stored_sub = {
                    **subscriptions[n],
                    "id": sub_id,
                    "meta": {
                        "versionId": "1",
                        "lastUpdated": (sub_e.get("response") or {}).get("lastModified") or authored,
                    },
                }
            results[p.index] = FollowUp(
                status=201,
                service_request_id=sr_id,
                task_id=task_id,
                subscription_id=sub_id,
                subscription=stored_sub,
                follow_up_id=p.follow_up_id,  # what the transaction log and OpenHIM's properties show
            )
            for dup in p.duplicates:
                earlier = results[dup]
                if earlier is not None:
                    earlier.service_request_id, earlier.task_id, earlier.subscription_id = (
                        sr_id,
                        task_id,
                        sub_id,
                    )

    def cht_target(self) -> str:
        """Where the CHT-record jobs go (shown in the outbox)."""
        return f"{self.settings.cht_url.rstrip('/')}/medic" if self.settings.cht_url else "CHT (unset)"
