"""A started follow-up's life: accepted by the CHT, completed by an Encounter, cancelled, failed, expired.

Every step after the start changes the follow-up's Task (and its Subscription, ServiceRequest)
that already exist: reads, version-checked updates, and retries when another step changed a Task
meanwhile. The ServiceRequest follows its follow-up in the same transaction: ``completed`` when
the CHW's answer is in, ``revoked`` when cancelled, failed or expired (docs/client.md). The
outbox jobs (``jobs.py``) and the API (cancel) call in here (a CHW's report: ``encounters.py``);
the writes themselves open in ``writes.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir.client import FhirClient, Resource
from cht_interop.fhir.errors import ResourceGone, ResourceNotFound, VersionConflict
from cht_interop.gateway.principals import Principal
from cht_interop.kit import exchanges
from cht_interop.kit.coalescer import Coalescer
from cht_interop.ltfu import owners
from cht_interop.ltfu import resources as R
from cht_interop.ltfu.lookups import find_tasks, id_chunks
from cht_interop.ltfu.patients import Patients
from cht_interop.ltfu.writes import (
    CHT_RECORD_JOB,
    LtfuWrites,
    etag,
    job_ordering_key,
    put,
    subscription_off_job,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def apart(call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
    """``call()`` in a context of its own, outside the caller's recording (``kit/exchanges.py``).

    For the work a group of jobs shares (the Task look-up, the acceptance): it is no one job's own,
    so the leader's journal row no longer carries the other follow-ups' Tasks, and its recording
    (the URL of every id, the answers serialised and redacted, then their orchestrations) cost
    about as much as the search itself. Cancelling the awaiting caller cancels it.
    """

    async def run() -> T:
        return await call()

    return asyncio.create_task(run(), context=contextvars.Context())


class Lifecycle:
    """The follow-up's steps after its start, on its existing Task."""

    def __init__(self, writes: LtfuWrites, patients: Patients) -> None:
        self.fhir = writes.fhir
        self.writes = writes
        self.patients = patients
        # concurrent look-ups of single follow-ups (CHT submissions finishing together) share a
        # search, recorded in no one submission's journal row (``apart``)
        self.find_task = Coalescer(self._find_tasks_apart)
        # ``ltfu.subscription-off`` jobs: the worker runs many at once (one per completed follow-up);
        # together they are one search and one transaction, so the worker's writes do not crowd the
        # single SQLite writer the Encounters coming in need
        self.switch_subscription_off = Coalescer(self._switch_off_many)

    async def _switch_off_many(self, subscription_ids: list[str]) -> list[bool]:
        return await switch_off_many(self.fhir, subscription_ids)

    async def find_tasks(self, follow_up_ids: list[str]) -> list[Resource | None]:
        """The Tasks of these follow-ups (``find_task`` batches concurrent look-ups into this)."""
        return await find_tasks(self.fhir, follow_up_ids)

    async def _find_tasks_apart(self, follow_up_ids: list[str]) -> list[Resource | None]:
        return await apart(lambda: self.find_tasks(follow_up_ids))

    # -- accepted by the CHT -----------------------------------------------------------------------

    async def accept_many(
        self, accepted: Sequence[tuple[Resource, str, str]], *, jobs: Sequence[NewJob] = ()
    ) -> None:
        """The CHT holds the records: each (Task, CHT record id, deadline) and the outbox ``jobs``
        that follow (the expiry) in one transaction; a Task changed meanwhile makes that transaction
        fail, then each is accepted on its own and the jobs are enqueued after them."""
        now = R.now_iso()  # one instant for the Tasks of one transaction (formatting it: ~1% of a list's CPU)
        entries = [put(_accepted(task, record_id, expires, now)) for task, record_id, expires in accepted]
        try:
            # our own Tasks, one step further; built here for this write, so handed over (not copied:
            # the copy cost as much as the write itself, ~0.2 ms per record)
            await self.writes.fhir_transaction(
                entries, jobs=jobs, trusted={e["fullUrl"] for e in entries}, handover=True
            )
        except VersionConflict:
            for task, record_id, expires in accepted:
                await self.accept(task, record_id, expires)
            await self.writes.enqueue(jobs)

    async def accept(self, task: Resource, cht_record_id: str, expires: str) -> Resource:
        """The CHT holds the record: Task requested → accepted, with the record id and the deadline."""
        for _attempt in range(5):
            try:
                updated = _accepted(task, cht_record_id, expires, R.now_iso())
                return (await self.fhir.update(updated, if_match=etag(task))).resource
            except VersionConflict:
                task = await self.fhir.read("Task", str(task["id"]))
        raise VersionConflict(f"Task/{task['id']} keeps changing; could not record the CHT record")

    # -- completed by an Encounter -----------------------------------------------------------------

    async def complete_follow_ups(self, encounter: Resource, patient_id: str, sr_id: str | None) -> None:
        """Complete the open follow-ups this stored Encounter ends: those of its ServiceRequest, or
        (a report without our ids) every open one of the patient. The expiry job's way to complete
        a follow-up whose Encounter was stored without completing it (a report coming in completes
        its follow-ups in its own write: ``encounters.py``)."""
        if sr_id is not None:
            params = [("based-on", f"ServiceRequest/{sr_id}"), ("status", R.OPEN_TASK_STATUS_PARAM)]
        else:
            params = [("patient", f"Patient/{patient_id}"), ("status", R.OPEN_TASK_STATUS_PARAM)]
        tasks = [
            t
            for t in await self.fhir.search_all("Task", params)
            if R.first_identifier_value(t, R.FOLLOW_UP_SYSTEM)
        ]
        if not tasks:
            return  # data without an open follow-up: stored, changes no Task
        outcome = R.encounter_outcome(encounter)
        now = R.now_iso()
        for _attempt in range(3):
            entries: list[Resource] = []
            for task in tasks:
                entries.append(put(R.completed_task(task, f"Encounter/{encounter['id']}", outcome, now)))
            entries += await self._service_request_entries(tasks, "completed", None, now)
            jobs: list[NewJob] = []
            if self.fhir.capabilities.notifies_in_write:
                # the Encounter's own notification was queued when it was stored, before this write
                entries += await self._subscription_off_entries(tasks)
            else:  # an external server may not have notified it yet: a job, after a delay
                jobs = [subscription_off_job(t) for t in tasks if R.task_subscription_id(t)]
            try:
                await self.writes.fhir_transaction(entries, jobs=jobs)
                exchanges.note("followUpId", R.first_identifier_value(tasks[0], R.FOLLOW_UP_SYSTEM))
                log.info(
                    "follow-up Task(s) %s completed by Encounter %s",
                    ", ".join(str(t["id"]) for t in tasks),
                    encounter["id"],
                )
                return
            except VersionConflict:
                tasks = [
                    t
                    for t in [await self.fhir.read("Task", str(t["id"])) for t in tasks]
                    if t.get("status") in R.OPEN_TASK_STATUSES
                ]
                if not tasks:
                    return
        raise VersionConflict(
            "the follow-up Tasks keep changing; the Encounter is stored, retry to complete them"
        )

    # -- ended without an Encounter ----------------------------------------------------------------

    async def end_follow_up(self, task: Resource, *, status: str, reason: str) -> bool:
        """An open follow-up ends without an Encounter (failed, expired): Task status + reason,
        Subscription off, in one transaction. False when the Task was no longer open."""
        for _attempt in range(5):
            if task.get("status") not in R.OPEN_TASK_STATUSES:
                return False
            now = R.now_iso()
            ended = {**task, "status": status, "statusReason": {"text": reason}, "lastModified": now}
            entries = [
                put(ended),
                *await self._subscription_off_entries([task]),
                *await self._service_request_entries([task], "revoked", reason, now),
            ]
            try:
                await self.writes.fhir_transaction(entries)
                log.info("follow-up Task %s %s: %s", task["id"], status, reason)
                return True
            except VersionConflict:
                task = await self.fhir.read("Task", str(task["id"]))
        return False

    async def cancel(
        self, service_request_id: str, reason: str | None = None, caller: Principal | None = None
    ) -> Resource:
        """Revoke the ServiceRequest, cancel its Task, switch its Subscription off, tell the CHT.
        ``caller``: the API client asking; another client's follow-up is "not known" to it."""
        try:
            sr = await self.fhir.read("ServiceRequest", service_request_id)
        except (ResourceNotFound, ResourceGone):
            raise ResourceNotFound(f"ServiceRequest/{service_request_id} is not known") from None
        if caller is not None and not owners.may_see(caller, owners.owner_of(sr)):
            raise ResourceNotFound(f"ServiceRequest/{service_request_id} is not known")
        tasks = [
            t
            for t in await self.fhir.search_all(
                "Task", [("based-on", f"ServiceRequest/{service_request_id}")]
            )
            if R.first_identifier_value(t, R.FOLLOW_UP_SYSTEM)
        ]
        open_tasks = [t for t in tasks if t.get("status") in R.OPEN_TASK_STATUSES]
        if sr.get("status") not in R.OPEN_SERVICE_REQUEST_STATUSES and not open_tasks:
            return sr  # already ended (cancelled, or completed by the CHW's answer): nothing to revoke
        text = reason or "Revoked by the requester"
        now = R.now_iso()
        entries = [put({**sr, "status": "revoked"})]
        jobs: list[NewJob] = []
        for task in open_tasks:
            entries.append(
                put({**task, "status": "cancelled", "statusReason": {"text": text}, "lastModified": now})
            )
            follow_up_id = R.first_identifier_value(task, R.FOLLOW_UP_SYSTEM) or str(task["id"])
            patient_cht_id = (sr.get("subject") or {}).get("identifier", {}).get("value")
            if patient_cht_id:
                jobs.append(
                    NewJob(
                        kind=CHT_RECORD_JOB,
                        target=self.writes.cht_target(),
                        payload={
                            "action": "cancel",
                            "follow_up": follow_up_id,
                            "record": R.cancel_record(
                                patient_cht_id=patient_cht_id,
                                service_request_id=service_request_id,
                                reason=text,
                            ),
                        },
                        ordering_key=job_ordering_key(follow_up_id),
                    )
                )
        entries += await self._subscription_off_entries(open_tasks)
        await self.writes.fhir_transaction(entries, jobs=jobs)
        return await self.fhir.read("ServiceRequest", service_request_id)

    async def _service_request_entries(
        self, tasks: Iterable[Resource], status: str, note: str | None, now: str
    ) -> list[Resource]:
        """Transaction entries moving these Tasks' ServiceRequests to ``status`` (those still open),
        each conditional on the version read: a requester's change meanwhile makes the step retry."""
        ids = sorted({sr_id for t in tasks if (sr_id := R.task_service_request_id(t)) is not None})
        entries: list[Resource] = []
        for chunk in id_chunks(self.fhir, ids):
            for sr in await self.fhir.search_all("ServiceRequest", [("_id", ",".join(chunk))]):
                ended = R.ended_service_request(sr, status, note, now)
                if ended is not None:
                    entries.append(put(ended))
        return entries

    async def _subscription_off_entries(self, tasks: Iterable[Resource]) -> list[Resource]:
        """Transaction entries switching these Tasks' Subscriptions off (those not off already)."""
        entries: list[Resource] = []
        for task in tasks:
            sub_id = R.task_subscription_id(task)
            if sub_id is None:
                continue
            try:
                sub = await self.fhir.read("Subscription", sub_id)
            except (ResourceNotFound, ResourceGone):
                continue
            if sub.get("status") != "off":
                entries.append(put({**sub, "status": "off"}))
        return entries


async def switch_off_many(fhir: FhirClient, subscription_ids: list[str]) -> list[bool]:
    """Those not off yet, off in one transaction; one by one if another write changed one meanwhile.
    True for each one this switched off; False when it was already off or is gone."""
    found: dict[str, Resource] = {}
    for chunk in id_chunks(fhir, sorted(set(subscription_ids))):
        for sub in await fhir.search_all("Subscription", [("_id", ",".join(chunk))]):
            found[str(sub["id"])] = sub
    to_switch = {sid: sub for sid, sub in found.items() if sub.get("status") != "off"}
    if to_switch:
        entries = [put({**sub, "status": "off"}) for sub in to_switch.values()]
        try:
            await fhir.transaction(
                {"resourceType": "Bundle", "type": "transaction", "entry": entries},
                trusted={e["fullUrl"] for e in entries},
                handover=True,
            )
        except VersionConflict:
            return [await _switch_off_one(fhir, sid) for sid in subscription_ids]
    first = {sid: True for sid in to_switch}  # a Subscription named twice is switched off once
    return [first.pop(sid, False) for sid in subscription_ids]


async def _switch_off_one(fhir: FhirClient, subscription_id: str) -> bool:
    for _attempt in range(5):
        try:
            sub = await fhir.read("Subscription", subscription_id)
        except (ResourceNotFound, ResourceGone):
            return False
        if sub.get("status") == "off":
            return False
        try:
            await fhir.update({**sub, "status": "off"}, if_match=etag(sub))
            return True
        except VersionConflict:
            continue
    raise VersionConflict(f"Subscription/{subscription_id} keeps changing")


def _accepted(task: Resource, cht_record_id: str, expires: str, now: str) -> Resource:
    """The Task once the CHT took its record (the record id is kept whatever the status now is)."""
    updated = dict(task)
    identifiers = [i for i in task.get("identifier") or [] if i.get("system") != R.CHT_RECORD_SYSTEM]
    updated["identifier"] = [*identifiers, {"system": R.CHT_RECORD_SYSTEM, "value": cht_record_id}]
    if task.get("status") == "requested":
        updated["status"] = "accepted"
        updated["businessStatus"] = {"text": "CHT task created for the community health worker"}
        updated["restriction"] = {"period": {"end": expires}}
    updated["lastModified"] = now
    return updated
