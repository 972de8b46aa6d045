"""Intake: a follow-up request (one ServiceRequest, or an LTFU list of them) in, an answer out.

Single requests are taken together while one batch is being checked and written (group commit:
a burst costs one look-up round and one transaction). A list is validated entry by entry, then
either started now (up to ``LTFU_LIST_SYNC_MAX`` entries) or handed to ``staged_lists`` and
answered 202. Either way the duplicate check and the write run under the one start lock
(``duplicates.py``), and the write itself opens in ``writes.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from cht_interop.fhir.errors import FhirError, IssueType
from cht_interop.kit.coalescer import BatchAbandoned, Coalescer
from cht_interop.kit.fair import OFF_LOOP_ITEMS, off_loop, paced
from cht_interop.kit.gc import GC_PAUSE_ENTRIES, gc_paused, release
from cht_interop.ltfu import owners
from cht_interop.ltfu import validation as V
from cht_interop.ltfu.duplicates import DuplicateCheck
from cht_interop.ltfu.model import FollowUp, ListAnswer, batch_entry, failed, finished
from cht_interop.ltfu.staged_lists import StagedLists
from cht_interop.ltfu.writes import LtfuWrites
from cht_interop.settings import Settings

# Under load, how long a batch of single follow-up requests waits for company (group commit).
START_LINGER_SECONDS = 0.002


def _checked_entries(entries: list[Any], client_id: str | None) -> list[V.FollowUpRequest | FhirError]:
    """Each list entry's ServiceRequest checked (and tagged with its client), or its error."""
    parsed: list[V.FollowUpRequest | FhirError] = []
    for entry in entries:
        try:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if resource is None:
                raise V.invalid('"entry.resource" is required', "Bundle.entry")
            request = V.validate_service_request(resource)
            owners.mark(request.resource, client_id)
            parsed.append(request)
        except FhirError as exc:
            # without its traceback: that holds this frame, ``parsed`` with it, in a cycle that
            # kept the whole list alive until the collector's next full pass
            parsed.append(exc.with_traceback(None))
    return parsed


class Intake:
    """Receives follow-up requests: singles (grouped), lists (now, or staged)."""

    def __init__(
        self, settings: Settings, writes: LtfuWrites, duplicates: DuplicateCheck, staged: StagedLists
    ) -> None:
        self.settings = settings
        self.writes = writes
        self.duplicates = duplicates
        self.staged = staged
        # Single requests waiting for the start lock are taken together, so a burst of them costs
        # one look-up round and one transaction (group commit).
        self._start_grouped = Coalescer(self._start_locked, lock=duplicates.lock, linger=START_LINGER_SECONDS)

    async def request_follow_up(self, body: Any, client_id: str | None = None) -> FollowUp:
        """One ServiceRequest: 201 with a new follow-up, 200 with the existing one; errors raise.
        ``client_id``: the API client submitting it, kept on its ServiceRequest (``owners``)."""
        # checked before the batch: this CPU work overlaps the running batch's database waits
        validated = V.validate_service_request(body)
        owners.mark(validated.resource, client_id)
        request = self.writes.schema_checked(validated)
        try:
            result = await self._start_grouped(request)
        except BatchAbandoned:
            busy = FhirError(
                "the batch carrying this request was interrupted; retry (a retry returns the follow-up "
                "if it was written)"
            )
            busy.status = HTTPStatus.SERVICE_UNAVAILABLE
            busy.issue_type = IssueType.TRANSIENT
            raise busy from None
        if result.error is not None:
            raise result.error
        if result.subscription is None and result.subscription_id is not None:
            result.subscription = await self.writes.fhir.read("Subscription", result.subscription_id)
        return result

    async def request_follow_up_list(
        self, bundle: Any, *, respond_async: bool = False, client_id: str | None = None
    ) -> ListAnswer:
        """An LTFU list (batch/transaction/collection Bundle of ServiceRequests) → batch-response
        (one entry per entry of the list, which are taken out of ``bundle``).

        Up to ``LTFU_LIST_SYNC_MAX`` entries (and without ``respond_async``) every follow-up is
        written before the answer. A longer list is checked entry by entry (validation, requester,
        patient, duplicates), committed as staged rows with the jobs that will write it, and
        answered 202: each valid entry ``202 Accepted`` with where its Task will be.
        """
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise V.invalid("the body must be a ServiceRequest or a Bundle of ServiceRequests")
        if bundle.get("type") not in ("batch", "transaction", "collection"):
            raise V.invalid('"type" must be one of [batch, transaction, collection]', "Bundle.type")
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise V.invalid('"entry" must be an array', "Bundle.entry")
        # A long list keeps tens of thousands of objects alive to the end: the collector's full
        # passes over them took 40% of a 10,000-entry list's acceptance (measured). Its entries
        # leave the caller's Bundle, so they are freed as this call ends, before the collector
        # resumes: left alive, the first young collection after the pause walked them all, one
        # 50-130 ms hold of the event loop (py-spy, 2026-12-07).
        paused = len(entries) >= GC_PAUSE_ENTRIES
        del entries
        async with gc_paused(paused):
            return await self._follow_up_list(bundle.pop("entry", None) or [], respond_async, client_id)

    async def _follow_up_list(
        self, entries: list[Any], respond_async: bool, client_id: str | None
    ) -> ListAnswer:
        # 10,000 entries' checks are ~40 ms of CPU, which held the event loop in one go: off it
        parsed = await off_loop(lambda: _checked_entries(entries, client_id), items=len(entries))
        # the checked requests hold what is kept of each entry: the entries go now, not at the
        # end (10,000 entries' dicts: ~5 MiB more alive while the list is staged, ``up``'s peak)
        entries.clear()
        valid = [p for p in parsed if isinstance(p, V.FollowUpRequest)]
        staged = respond_async or len(valid) > self.settings.live.ltfu_list_sync_max
        if staged:
            list_id = str(uuid.uuid4())
            started = iter(await self.staged.stage(list_id, parsed, client_id) if valid else [])
        else:
            list_id = None
            started = iter(await self._start(valid) if valid else [])
        results: list[FollowUp] = []
        async for p in paced(parsed):  # a long list's answer: see kit/fair.py
            results.append(failed(p) if isinstance(p, FhirError) else next(started))
        if staged and not any(r.list_id == list_id for r in results):
            staged = False  # nothing of this list to write: its answer is final now
        bundle = {
            "resourceType": "Bundle",
            "id": list_id or str(uuid.uuid4()),
            "type": "batch-response",
            "entry": [batch_entry(r) async for r in paced(results)],
        }
        if len(parsed) >= OFF_LOOP_ITEMS:  # a long list's objects are freed off the loop: kit/gc.py
            release(parsed, results)
        return ListAnswer(202 if staged else 200, bundle, list_id if staged else None)

    async def _start(self, requests: Sequence[V.FollowUpRequest]) -> list[FollowUp]:
        async with self.duplicates.lock:
            return await self._start_locked(requests)

    async def _start_locked(self, requests: Sequence[V.FollowUpRequest]) -> list[FollowUp]:
        """Check and write, holding this process's start lock (the caller, or the group commit, took it)."""
        async with self.duplicates.across_processes(len(requests)) as held:
            results, fresh = await self.duplicates.check(requests, held)
            if fresh:
                await self.writes.start(fresh, results)
        return finished(results)
