"""The follow-up's outbox jobs: CHT submissions (``cht.record``) and expiry (``ltfu.follow-up-expiry``).

``cht.record`` posts the follow-up record (or the cancel record) to the CHT. CHT failures are
sorted by ``ChtClient``: transient ones are retried by the outbox with backoff, permanent ones
dead-letter the job at once and ``on_dead`` fails the Task and switches its Subscription off.
On success the Task becomes ``accepted`` with the CHT record id, and an expiry job is put in the
outbox, due when the CHT task window (plus a day) has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cht_interop.cht.client import ChtClient, ChtPermanentError, ChtTransientError
from cht_interop.delivery.jobs import DeliveryReceipt, NewJob, PermanentDeliveryError, TransientDeliveryError
from cht_interop.delivery.registry import Job
from cht_interop.ltfu import resources as R
from cht_interop.ltfu.batching import Coalescer
from cht_interop.ltfu.service import (
    CHT_RECORD_JOB,
    EXPIRY_JOB,
    LIST_WRITE_JOB,
    SUBSCRIPTION_OFF_JOB,
    LtfuService,
    ltfu_service,
    switch_subscription_off,
)
from cht_interop.services import Services


@dataclass(frozen=True, slots=True)
class _Acceptance:
    task: dict[str, Any]
    record_id: str
    follow_up_id: str
    expires: datetime


class LtfuJobs:
    """Handlers bound to one process's Services (FHIR client, DB for the outbox, shared HTTP client)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.ltfu: LtfuService = ltfu_service(services)
        self._cht: ChtClient | None = None
        # Handlers finishing together record their acceptances in one write (group commit).
        self._record_acceptance = Coalescer(self._record_acceptances)

    def cht(self) -> ChtClient:
        settings = self.services.settings
        if not settings.cht_url:
            raise TransientDeliveryError("CHT_URL is not configured: the follow-up waits for a CHT")
        if self._cht is None:
            password = settings.cht_password.get_secret_value() if settings.cht_password else ""
            self._cht = ChtClient(settings.cht_url, settings.cht_username, password, self.services.http)
        return self._cht

    async def _post(self, record: dict[str, Any]) -> str:
        try:
            return await self.cht().create_record(record)
        except ChtPermanentError as exc:
            raise PermanentDeliveryError(exc.message, http_status=exc.status) from exc
        except ChtTransientError as exc:
            raise TransientDeliveryError(exc.message, http_status=exc.status) from exc

    # -- cht.record --------------------------------------------------------------------------------

    async def submit(self, job: Job) -> str | DeliveryReceipt | None:
        action = job.payload.get("action")
        follow_up_id = str(job.payload["follow_up"])
        record = dict(job.payload["record"])
        if action == "cancel":
            record_id = await self._post(record)
            return DeliveryReceipt(200, f"CHT cancel record {record_id}")
        task = await self.ltfu.find_task(follow_up_id)
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
        record_id = await self._post(record)
        expires = datetime.now(UTC) + timedelta(seconds=self.services.settings.follow_up_expiry_seconds)
        await self._record_acceptance(_Acceptance(task, record_id, follow_up_id, expires))
        return DeliveryReceipt(200, f"CHT record {record_id}")

    async def _record_acceptances(self, group: list[_Acceptance]) -> list[None]:
        """Task → accepted and the expiry job, for every acceptance waiting: two writes in all."""
        await self.ltfu.accept_many([(a.task, a.record_id, _iso(a.expires)) for a in group])
        await self._schedule_expiries([(a.follow_up_id, a.expires) for a in group])
        return [None] * len(group)

    async def submission_dead(self, job: Job, reason: str) -> None:
        """The CHT refused the follow-up (or kept failing past the horizon): the Task fails, visibly."""
        if job.payload.get("action") != "follow-up":
            return
        task = await self.ltfu.find_task(str(job.payload["follow_up"]))
        if task is not None:
            await self.ltfu.end_follow_up(
                task, status="failed", reason=f"The CHT did not take the follow-up: {reason}"
            )

    async def _schedule_expiry(self, follow_up_id: str, due: datetime) -> None:
        await self._schedule_expiries([(follow_up_id, due)])

    async def _schedule_expiries(self, expiries: list[tuple[str, datetime]]) -> None:
        """One expiry job for the group, due at its latest deadline (they are milliseconds apart)."""
        from cht_interop.delivery.outbox import enqueue

        job = NewJob(
            kind=EXPIRY_JOB,
            target="follow-up expiry",
            payload={"follow_ups": sorted({follow_up_id for follow_up_id, _due in expiries})},
        )
        async with self.services.db.transaction() as conn:
            await enqueue(conn, [job], now=max(due for _id, due in expiries))

    def _expiry_from_task(self, task: dict[str, Any]) -> datetime:
        end = ((task.get("restriction") or {}).get("period") or {}).get("end")
        if isinstance(end, str):
            try:
                return datetime.fromisoformat(end.replace("Z", "+00:00"))
            except ValueError:
                pass
        return datetime.now(UTC) + timedelta(seconds=self.services.settings.follow_up_expiry_seconds)

    # -- expiry ------------------------------------------------------------------------------------

    async def expire(self, job: Job) -> str | DeliveryReceipt | None:
        """Fail every follow-up of the job still open past its deadline."""
        ids = job.payload.get("follow_ups") or [job.payload["follow_up"]]
        days = self.services.settings.follow_up_expiry_seconds / 86400
        expired = 0
        for task in await self.ltfu.find_tasks([str(i) for i in ids]):
            if task is None or task.get("status") not in R.OPEN_TASK_STATUSES:
                continue
            if self._expiry_from_task(task) > datetime.now(UTC):
                raise TransientDeliveryError("not due yet")  # clock skew between replicas: look again soon
            reason = f"Expired: no follow-up report from the CHT within {days:g} days"
            expired += await self.ltfu.end_follow_up(task, status="failed", reason=reason)
        return f"{expired} of {len(ids)} follow-up(s) expired"

    # -- staged LTFU lists ---------------------------------------------------------------------------

    async def write_list(self, job: Job) -> str | DeliveryReceipt | None:
        """Write a chunk of a staged LTFU list (a failed write is retried by the outbox)."""
        positions = [int(p) for p in job.payload["positions"]]
        return await self.ltfu.write_staged(str(job.payload["list_id"]), positions)

    async def list_write_dead(self, job: Job, reason: str) -> None:
        """The chunk could not be written: its entries say so, and free their patients for new requests."""
        positions = [int(p) for p in job.payload["positions"]]
        await self.ltfu.abandon_staged(str(job.payload["list_id"]), positions, reason)

    # -- subscription off --------------------------------------------------------------------------

    async def subscription_off(self, job: Job) -> str | DeliveryReceipt | None:
        switched = await switch_subscription_off(self.services.fhir, str(job.payload["subscription_id"]))
        return "Subscription switched off" if switched else "Subscription already off"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def register_handlers(services: Services) -> None:
    jobs = LtfuJobs(services)
    services.handlers.register(CHT_RECORD_JOB, jobs.submit, on_dead=jobs.submission_dead)
    services.handlers.register(EXPIRY_JOB, jobs.expire)
    services.handlers.register(SUBSCRIPTION_OFF_JOB, jobs.subscription_off)
    services.handlers.register(LIST_WRITE_JOB, jobs.write_list, on_dead=jobs.list_write_dead)
