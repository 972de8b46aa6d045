"""The LTFU outbox job handlers: the work that follows a commit, retried until it is done.

Thin over the rooms (``lifecycle.py``, ``staged_lists.py``): CHT submissions (``cht.record``),
expiry (``ltfu.follow-up-expiry``), Subscriptions off after completion (``ltfu.subscription-off``),
and the staged lists' background writes and purges (``ltfu.list-write``, ``ltfu.list-purge``).
The job kinds are named in ``writes.py``, where the jobs are enqueued.

``cht.record`` writes the follow-up record (or the cancel record) into the CHT under an ``_id``
derived from the follow-up (``cht/records.py``), so a resent job (a worker killed before it recorded
the CHT's answer) finds its record there instead of making a second one. CHT failures are
sorted by ``ChtClient``: transient ones are retried by the outbox with backoff, permanent ones
dead-letter the job at once and ``on_dead`` fails the Task and switches its Subscription off.
On success the Task becomes ``accepted`` with the CHT record id, and an expiry job is put in the
outbox, due when the CHT task window (plus a day) has passed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from cht_interop.cht.client import ChtClient, ChtPermanentError, ChtTransientError, RecordWrite
from cht_interop.cht.pacing import ChtPacer
from cht_interop.cht.records import cancel_record_id, follow_up_record_id, record_doc
from cht_interop.delivery.jobs import DeliveryReceipt, NewJob, PermanentDeliveryError, TransientDeliveryError
from cht_interop.delivery.registry import HandlerRegistry, Job
from cht_interop.fhir.client import FhirClient
from cht_interop.kit.coalescer import Coalescer
from cht_interop.kit.pooled_http import PooledHttp
from cht_interop.ltfu import resources as R
from cht_interop.ltfu.lifecycle import apart
from cht_interop.ltfu.lookups import id_chunks
from cht_interop.ltfu.service import LtfuService
from cht_interop.ltfu.staged_lists import WRITES_AT_ONCE
from cht_interop.ltfu.writes import (
    CHT_RECORD_JOB,
    EXPIRY_JOB,
    LIST_PURGE_JOB,
    LIST_WRITE_JOB,
    SUBSCRIPTION_OFF_JOB,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Acceptance:
    task: dict[str, Any]
    record_id: str
    follow_up_id: str


class LtfuJobs:
    """Handlers bound to the process's LtfuService (the one its API uses) and shared HTTP clients
    (``pooled``: the aiohttp session the CHT records go over, see ``ChtClient``)."""

    def __init__(self, ltfu: LtfuService, http: httpx.AsyncClient, pooled: PooledHttp | None = None) -> None:
        self.ltfu = ltfu
        self.settings = ltfu.settings
        self.fhir: FhirClient = ltfu.fhir
        self.http = http
        self.pooled = pooled
        self._cht: ChtClient | None = None
        # the window of concurrent CHT calls, shared by every submission of this process
        self.pacer = ChtPacer(
            self.settings.cht_max_concurrent_requests, batch_size=self.settings.cht_write_batch_size
        )
        # Handlers finishing together record their acceptances in one write (group commit).
        self._record_acceptance = Coalescer(self._record_acceptances)

    def cht(self) -> ChtClient:
        """The CHT API client, built on first use (a missing CHT_URL makes the job wait, not fail)."""
        settings = self.settings
        if not settings.cht_url:
            raise TransientDeliveryError("CHT_URL is not configured: the follow-up waits for a CHT")
        if self._cht is None:
            password = settings.cht_password.get_secret_value() if settings.cht_password else ""
            self._cht = ChtClient(
                settings.cht_url,
                settings.cht_username,
                password,
                self.http,
                pacer=self.pacer,
                write_batch_size=settings.cht_write_batch_size,
                pooled=self.pooled,
            )
        return self._cht

    async def _write(self, record_id: str, record: dict[str, Any]) -> RecordWrite:
        try:
            return await self.cht().write_record(record_doc(record_id, record))
        except ChtPermanentError as exc:
            raise PermanentDeliveryError(exc.message, http_status=exc.status) from exc
        except ChtTransientError as exc:
            raise TransientDeliveryError(
                exc.message, http_status=exc.status, retry_after=exc.retry_after
            ) from exc

    # -- cht.record --------------------------------------------------------------------------------

    async def submit(self, job: Job) -> str | DeliveryReceipt | None:
        """Write the follow-up (or cancel) record into the CHT; the Task becomes accepted on success."""
        action = job.payload.get("action")
        follow_up_id = str(job.payload["follow_up"])
        record = dict(job.payload["record"])
        if action == "cancel":
            written = await self._write(cancel_record_id(follow_up_id), record)
            return DeliveryReceipt(200, f"CHT cancel record {written.record_id}{_again(written)}")
        task = await self.ltfu.lifecycle.find_task(follow_up_id)
        if task is None:
            raise PermanentDeliveryError(f"the follow-up Task ({follow_up_id}) is gone")
        if task.get("status") != "requested":
            # A re-run after the CHT already took it, or the follow-up ended meanwhile: no second record.
            if task.get("status") in R.OPEN_TASK_STATUSES:
                await self._schedule_expiry(follow_up_id, self._expiry_from_task(task))
            return DeliveryReceipt(None, f"not sent: the follow-up is {task.get('status')}")
        sr_id = R.task_service_request_id(task)
        record["service_request_id"] = sr_id
        record["task_id"] = task["id"]
        written = await self._write(follow_up_record_id(follow_up_id), record)
        log.info(
            "follow-up %s sent to the CHT as record %s (Task %s)%s",
            follow_up_id,
            written.record_id,
            task["id"],
            _again(written),
        )
        await self._record_acceptance(_Acceptance(task, written.record_id, follow_up_id))
        return DeliveryReceipt(200, f"CHT record {written.record_id}{_again(written)}")

    async def _record_acceptances(self, group: list[_Acceptance]) -> list[None]:
        """Task → accepted and the expiry job, for every acceptance waiting: one write in all, in no
        one submission's journal row (``apart``: it holds the group's Tasks)."""
        # one deadline for the group, taken as it is written (computed and formatted per record, it
        # was ~1% of the worker's CPU: the live settings' look-up, the clock, the ISO string)
        expires = datetime.now(UTC) + timedelta(seconds=self.settings.live.follow_up_expiry_seconds)
        expiry = _expiry_job([(a.follow_up_id, expires) for a in group])
        deadline = _iso(expires)
        accepted = [(a.task, a.record_id, deadline) for a in group]
        await apart(lambda: self.ltfu.lifecycle.accept_many(accepted, jobs=[expiry]))
        return [None] * len(group)

    async def submission_dead(self, job: Job, reason: str) -> None:
        """The CHT refused the follow-up (or kept failing past the horizon): the Task fails, visibly."""
        if job.payload.get("action") != "follow-up":
            return
        task = await self.ltfu.lifecycle.find_task(str(job.payload["follow_up"]))
        if task is not None:
            await self.ltfu.lifecycle.end_follow_up(
                task, status="failed", reason=f"The CHT did not take the follow-up: {reason}"
            )

    async def _schedule_expiry(self, follow_up_id: str, due: datetime) -> None:
        await self.ltfu.writes.enqueue([_expiry_job([(follow_up_id, due)])])

    def _expiry_from_task(self, task: dict[str, Any]) -> datetime:
        end = ((task.get("restriction") or {}).get("period") or {}).get("end")
        if isinstance(end, str):
            try:
                return datetime.fromisoformat(end.replace("Z", "+00:00"))
            except ValueError:
                pass
        return datetime.now(UTC) + timedelta(seconds=self.settings.live.follow_up_expiry_seconds)

    # -- expiry ------------------------------------------------------------------------------------

    async def expire(self, job: Job) -> str | DeliveryReceipt | None:
        """Fail every follow-up of the job still open past its deadline.

        Unless an Encounter for it was stored without completing it (the Task update conflicted, or
        the completion failed after the Encounter's write): such a follow-up completes with that
        Encounter, as the Encounter's own request would have done, instead of failing.
        """
        ids = job.payload.get("follow_ups") or [job.payload["follow_up"]]
        days = self.settings.live.follow_up_expiry_seconds / 86400
        tasks = [
            t
            for t in await self.ltfu.lifecycle.find_tasks([str(i) for i in ids])
            if t is not None and t.get("status") in R.OPEN_TASK_STATUSES
        ]
        if any(self._expiry_from_task(t) > datetime.now(UTC) for t in tasks):
            raise TransientDeliveryError("not due yet")  # clock skew between replicas: look again soon
        late = await _late_encounters(self.ltfu.fhir, tasks)
        expired = completed = 0
        for task in tasks:
            encounter = late.get(str(task["id"]))
            if encounter is not None:
                patient_id = R.ref_id(task.get("for"), "Patient") or ""
                await self.ltfu.lifecycle.complete_follow_ups(encounter, patient_id, _based_on(encounter))
                completed += 1
                continue
            reason = f"Expired: no follow-up report from the CHT within {days:g} days"
            expired += await self.ltfu.lifecycle.end_follow_up(task, status="failed", reason=reason)
        note = f"{expired} of {len(ids)} follow-up(s) expired"
        if completed:
            note += f"; {completed} completed with an Encounter stored without completing them"
        return note

    # -- staged LTFU lists ---------------------------------------------------------------------------

    async def write_list(self, job: Job) -> str | DeliveryReceipt | None:
        """Write a chunk of a staged LTFU list (a failed write is retried by the outbox)."""
        positions = [int(p) for p in job.payload["positions"]]
        return await self.ltfu.staged_lists.write(
            str(job.payload["list_id"]), positions, first_attempt=job.attempts == 0
        )

    async def list_write_dead(self, job: Job, reason: str) -> None:
        """The chunk could not be written: its entries say so, and free their patients for new requests."""
        positions = [int(p) for p in job.payload["positions"]]
        await self.ltfu.staged_lists.abandon(str(job.payload["list_id"]), positions, reason)

    async def purge_list(self, job: Job) -> str | DeliveryReceipt | None:
        """A finished list's retention has passed: its status rows go (its follow-ups stay)."""
        purged = await self.ltfu.staged_lists.purge(str(job.payload["list_id"]))
        return "list status deleted" if purged else "nothing to delete"

    # -- subscription off --------------------------------------------------------------------------

    async def subscription_off(self, job: Job) -> str | DeliveryReceipt | None:
        """Switch a completed follow-up's Subscription off. An external FHIR server (HAPI) sends its
        own notifications, later than our write: the job waits until it has had time to notify
        the completing Encounter (``EXTERNAL_SUBSCRIPTION_OFF_DELAY_SECONDS``)."""
        delay = self.settings.external_subscription_off_delay_seconds
        if delay > 0 and not self.fhir.capabilities.notifies_in_write:
            waited = (datetime.now(UTC) - job.created_at).total_seconds()
            if waited < delay:
                raise TransientDeliveryError(
                    f"waiting {delay - waited:.0f} s more: the external FHIR server notifies the "
                    "completing Encounter itself before its Subscription goes off"
                )
        switched = await self.ltfu.lifecycle.switch_subscription_off(str(job.payload["subscription_id"]))
        return "Subscription switched off" if switched else "Subscription already off"


async def _late_encounters(fhir: FhirClient, tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Task id → the earliest Encounter that should have completed that open follow-up.

    That is an Encounter of the Task's patient, stored (``meta.lastUpdated``) at or after the Task
    was authored, and based on the Task's ServiceRequest or on none (the CHT's report without our
    ids: ``encounters.py`` completes every open follow-up of the patient with it). An Encounter
    based on another ServiceRequest belongs to another follow-up. A few searches for the lot.
    """
    by_patient: dict[str, list[tuple[dict[str, Any], datetime]]] = {}
    for task in tasks:
        patient_id = R.ref_id(task.get("for"), "Patient")
        authored = _instant(task.get("authoredOn"))
        if patient_id is not None and authored is not None:
            by_patient.setdefault(patient_id, []).append((task, authored))
    found: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for chunk in id_chunks(fhir, sorted(by_patient)):
        since = min(authored for p in chunk for _task, authored in by_patient[p])
        encounters = await fhir.search_all(
            "Encounter",
            [
                ("patient", ",".join(f"Patient/{p}" for p in chunk)),
                ("_lastUpdated", f"ge{_iso(since)}"),
            ],
        )
        for encounter in encounters:
            recorded = _instant((encounter.get("meta") or {}).get("lastUpdated"))
            patient_id = R.ref_id(encounter.get("subject"), "Patient")
            if recorded is None or patient_id is None:
                continue
            based_on = _based_on(encounter)
            for task, authored in by_patient.get(patient_id, []):
                if recorded < authored or based_on not in (None, R.task_service_request_id(task)):
                    continue
                task_id = str(task["id"])
                if task_id not in found or recorded < found[task_id][0]:
                    found[task_id] = (recorded, encounter)
    return {task_id: encounter for task_id, (_recorded, encounter) in found.items()}


def _expiry_job(expiries: list[tuple[str, datetime]]) -> NewJob:
    """One expiry job for a group, due at its latest deadline (they are milliseconds apart)."""
    return NewJob(
        kind=EXPIRY_JOB,
        target="follow-up expiry",
        payload={"follow_ups": sorted({follow_up_id for follow_up_id, _due in expiries})},
        due=max(due for _id, due in expiries),
    )


def _again(written: RecordWrite) -> str:
    return "" if written.created else " (already in the CHT: an earlier attempt wrote it)"


def _based_on(encounter: dict[str, Any]) -> str | None:
    """The ServiceRequest id an Encounter is based on (None: a report without our ids)."""
    for ref in encounter.get("basedOn") or []:
        sr_id = R.ref_id(ref, "ServiceRequest")
        if sr_id is not None:
            return sr_id
    return None


def _instant(value: Any) -> datetime | None:
    """A FHIR instant/dateTime with a zone → aware datetime (None if absent or not one)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def register_handlers(
    handlers: HandlerRegistry, ltfu: LtfuService, http: httpx.AsyncClient, pooled: PooledHttp | None = None
) -> None:
    """Put the LTFU handlers on this process's registry (``handlers.py`` calls every domain's)."""
    jobs = LtfuJobs(ltfu, http, pooled)
    handlers.register(CHT_RECORD_JOB, jobs.submit, on_dead=jobs.submission_dead)
    # a worker holds no more CHT jobs than the CHT's window can serve: the rest wait, pending
    handlers.limit_in_flight(CHT_RECORD_JOB, jobs.pacer.in_flight_allowance)
    handlers.register(EXPIRY_JOB, jobs.expire)
    handlers.register(SUBSCRIPTION_OFF_JOB, jobs.subscription_off)
    handlers.register(LIST_WRITE_JOB, jobs.write_list, on_dead=jobs.list_write_dead)
    handlers.limit_in_flight(LIST_WRITE_JOB, lambda: WRITES_AT_ONCE)  # memory: staged_lists.py
    handlers.register(LIST_PURGE_JOB, jobs.purge_list)
