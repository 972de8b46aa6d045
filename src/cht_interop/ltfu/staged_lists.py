"""Staged LTFU lists: a long list answered 202 at once, its follow-ups written in the background.

A list longer than ``LTFU_LIST_SYNC_MAX`` (or sent with ``Prefer: respond-async``) is checked
entry by entry now (validation, requester, patient, duplicates) and committed as staged rows (in
slices, the list counting only once the last is in), with the keys that keep its follow-ups from
being started twice meanwhile and the ``ltfu.list-write`` jobs that will write it. This module
owns that lifecycle: stage, write a chunk (safe to run again), abandon a chunk, report status,
purge once the retention has passed. The rows themselves are kept by ``lists.py``; the writes
open in ``writes.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.delivery.jobs import NewJob
from cht_interop.delivery.outbox import enqueue
from cht_interop.fhir.client import Resource
from cht_interop.fhir.errors import FhirError
from cht_interop.gateway.principals import Principal
from cht_interop.kit.fair import off_loop, paced
from cht_interop.kit.gc import memory_returned, release
from cht_interop.ltfu import lists as L
from cht_interop.ltfu import owners
from cht_interop.ltfu import validation as V
from cht_interop.ltfu.duplicates import DuplicateCheck, staged_keys
from cht_interop.ltfu.lookups import find_tasks
from cht_interop.ltfu.model import FollowUp, Pending, batch_entry, failed, finished, from_task
from cht_interop.ltfu.requesters import Requesters
from cht_interop.ltfu.writes import LIST_PURGE_JOB, LIST_WRITE_JOB, LtfuWrites
from cht_interop.settings import Settings

# Chunks of staged lists one worker writes at once (``ltfu/jobs.py`` caps the job kind; the rest
# wait, pending). SQLite writes one at a time anyway; a second overlaps its reads with the first's
# write. Left to the worker's concurrency (64), all 20 chunks of a 10,000-entry list were loaded,
# checked and built at once (~12 MiB of objects each, several times that resident): ``up``'s peak.
WRITES_AT_ONCE = 2
# Entries staged per transaction (``_commit_in_slices``): SQLite's one writer is held 10-20 ms per
# slice of 500 (with their ~1,000 keys) instead of ~120 ms for a whole 10,000-entry list.
STAGE_SLICE_ENTRIES = 500


class StagedLists:
    """Stage, write, abandon, purge and report the staged lists of this process's database."""

    def __init__(
        self, settings: Settings, writes: LtfuWrites, duplicates: DuplicateCheck, requesters: Requesters
    ) -> None:
        self.settings = settings
        self.writes = writes
        self.duplicates = duplicates
        self.requesters = requesters
        self.db = writes.db
        # lists this process is staging now: their unfinished rows are not a crash's to drop
        self._staging_now: set[str] = set()

    async def stage(
        self, list_id: str, parsed: Sequence[V.FollowUpRequest | FhirError], client_id: str | None = None
    ) -> list[FollowUp]:
        """Check every valid entry now; commit answers, staged entries, their keys and the jobs that
        will write them (in slices: ``_commit_in_slices``). One answer per valid entry, in order.
        ``client_id``: who sent the list (only it, or an admin, reads its status).

        The R4 check of each ServiceRequest runs here, in the process answering the list (idle
        while the worker writes it), not in the worker's write: it was a third of that write's
        CPU. An entry that fails it answers 400 at once."""
        valid = [p for p in parsed if isinstance(p, V.FollowUpRequest)]
        checked = await off_loop(lambda: [self._schema_checked(p) for p in valid], items=len(valid))
        verdicts = iter(checked)
        rechecked = [p if isinstance(p, FhirError) else next(verdicts) for p in parsed]
        staged = iter(
            await self._stage(list_id, rechecked, client_id)
            if any(isinstance(c, V.FollowUpRequest) for c in checked)
            else []
        )
        return [failed(c) if isinstance(c, FhirError) else next(staged) for c in checked]

    def _schema_checked(self, request: V.FollowUpRequest) -> V.FollowUpRequest | FhirError:
        try:
            return self.writes.schema_checked(request)
        except FhirError as exc:
            return exc

    async def _stage(
        self, list_id: str, parsed: Sequence[V.FollowUpRequest | FhirError], client_id: str | None
    ) -> list[FollowUp]:
        valid = [p for p in parsed if isinstance(p, V.FollowUpRequest)]
        positions = [n for n, p in enumerate(parsed) if isinstance(p, V.FollowUpRequest)]
        # before the start lock (see there); the Tasks are read under it (``check``)
        named = await self.duplicates.resolve(valid, with_tasks=False)
        for attempt in range(2):
            async with self.duplicates.turn() as held:
                results, fresh = await self.duplicates.check(valid, held, named)
                for p in fresh:
                    results[p.index] = FollowUp(status=202, follow_up_id=p.follow_up_id, list_id=list_id)
                    for dup in p.duplicates:
                        results[dup] = FollowUp(
                            status=200,
                            follow_up_id=p.follow_up_id,
                            note="same patient and requester earlier in this list",
                        )
                answers = finished(results)
                if not fresh:  # every entry answered now: the answer is final, nothing to keep
                    return answers
                staged_by_index = {p.index: p for p in fresh}
                rows = [
                    L.EntryRow(n, response=batch_entry(failed(p)))
                    for n, p in enumerate(parsed)
                    if isinstance(p, FhirError)
                ]
                async for index, answer in paced(enumerate(answers)):  # see kit/fair.py
                    to_stage = staged_by_index.get(index)
                    if to_stage is not None:
                        rows.append(
                            L.EntryRow(
                                positions[index],
                                follow_up_id=to_stage.follow_up_id,
                                request=_staged_request(to_stage),
                            )
                        )
                    else:
                        rows.append(L.EntryRow(positions[index], response=batch_entry(answer)))
                rows.sort(key=lambda r: r.position)
                chunk = self.settings.ltfu_list_chunk
                to_write = [positions[p.index] for p in fresh]
                jobs = [
                    NewJob(
                        kind=LIST_WRITE_JOB,
                        target=f"LTFU list {list_id}",
                        payload={"list_id": list_id, "positions": to_write[start : start + chunk]},
                    )
                    for start in range(0, len(to_write), chunk)
                ]
                keys = [(k, p.follow_up_id) async for p in paced(fresh) for k in staged_keys(p)]
                staging = await off_loop(partial(L.staging, list_id, rows, keys), items=len(rows))
                # the rows as the driver inserts them are all the transaction needs: what they were
                # built from goes before it (for 10,000 entries ~5 MiB, alive through its commit)
                del rows, keys
                try:
                    await self._commit_in_slices(staging, jobs, client_id)
                except IntegrityError:
                    if attempt == 0:
                        continue  # another process staged one of these follow-ups meanwhile: check again
                    raise
                # the list's patients, checked entries and rows are freed off the loop: kit/gc.py
                release(named.patients, named.tasks_by_patient, fresh, staging.entry_rows, staging.key_rows)
                return answers
        raise AssertionError("unreachable")

    async def _commit_in_slices(self, staging: L.Staging, jobs: list[NewJob], client_id: str | None) -> None:
        """Commit the list's rows a slice at a time, hidden (``staging``) until the last slice,
        which also makes its keys count and enqueues its jobs. On SQLite one 10,000-entry
        transaction held the one writer ~120 ms, every other client's follow-up waiting; a
        slice holds it 10-20 ms. The keys are claimed meanwhile (``turn``): no check of them
        can run before the last commit. A slice that fails takes the earlier ones back with it,
        or the next list staged does (``L.drop_staging``: those left by a crash too).

        PostgreSQL stages the list in one slice: its writers do not wait for each other, and the
        list holds the start lock whole for its turn anyway (``turn``), which slices would only
        lengthen (a commit and its sync each)."""
        list_id = staging.list_id
        slices = staging.slices(STAGE_SLICE_ENTRIES if self.db.is_sqlite else max(1, len(staging.entry_rows)))
        self._staging_now.add(list_id)
        committed = False
        try:
            for n, rows in enumerate(slices):
                first, last = n == 0, n == len(slices) - 1
                async with self.writes.db_transaction() as conn:
                    if first:
                        await L.drop_staging(conn, keep=self._staging_now)
                        await L.open_list(conn, staging, client_id, complete=last)
                    await L.stage_rows(conn, rows)
                    if last:
                        if staging.key_rows:
                            self.duplicates.note_staged()
                        if not first:
                            await L.close_staging(conn, list_id)
                        await enqueue(conn, jobs)
                committed = True
        except BaseException:
            if committed:
                with contextlib.suppress(Exception):  # else the next list staged drops it
                    async with self.writes.db_transaction() as conn:
                        await L.drop_staging(conn, only=list_id)
            raise
        finally:
            self._staging_now.discard(list_id)

    async def write(self, list_id: str, positions: Sequence[int], *, first_attempt: bool = False) -> str:
        """The background job of a staged list: write these entries' follow-ups, record the answers.

        Safe to run again after a crash: follow-ups whose Task exists (found by the follow-up id
        chosen at staging) are answered from it, not written twice. On the job's ``first_attempt``
        (no claim of it before, crashed or not) no such Task can exist: only this job writes these
        follow-up ids, so that search is skipped (one 500-id search per chunk, ~2% of the worker's
        CPU writing a list).
        """
        async with memory_returned():
            return await self._write(list_id, positions, first_attempt)

    async def _write(self, list_id: str, positions: Sequence[int], first_attempt: bool) -> str:
        async with self.db.connect() as conn:
            entries = await L.load_staged(conn, list_id, positions)
        if not entries:
            return "nothing left to write"
        existing: list[Resource | None] = (
            [None] * len(entries)
            if first_attempt
            else await find_tasks(self.writes.fhir, [e.follow_up_id for e in entries])
        )
        results: list[FollowUp | None] = [None] * len(entries)
        requests = [_unstage_request(e.request) for e in entries]
        requesters = await self.requesters.resolve({r.requester_ref for r, _pid, _cht in requests})
        pending: list[Pending] = []
        for n, (entry, task, (request, patient_id, cht_id)) in enumerate(
            zip(entries, existing, requests, strict=True)
        ):
            requester = requesters[request.requester_ref]
            if task is not None:
                results[n] = from_task(task)
            elif isinstance(requester, FhirError):
                results[n] = failed(requester)
            else:
                pending.append(
                    Pending(
                        n, request, {"id": patient_id}, cht_id, requester, follow_up_id=entry.follow_up_id
                    )
                )
        if pending:
            await self.writes.start(pending, results)
        answers = finished(results)
        async with self.writes.db_transaction() as conn:
            self.duplicates.note_freed()  # look again: was that the last staged list?
            complete = await L.finish(
                conn, list_id, [(e.position, batch_entry(a)) for e, a in zip(entries, answers, strict=True)]
            )
            if complete:
                await self._schedule_purge(conn, list_id)
        written = sum(1 for a in answers if a.status == 201)
        return f"{written} of {len(entries)} follow-up(s) written" + (" (list complete)" if complete else "")

    async def abandon(self, list_id: str, positions: Sequence[int], reason: str) -> None:
        """A list-write job gave up: its entries still staged answer 500 and free their keys."""
        async with self.db.connect() as conn:
            entries = await L.load_staged(conn, list_id, positions)
        existing = await find_tasks(self.writes.fhir, [e.follow_up_id for e in entries])
        answered: list[tuple[int, Resource]] = []
        for entry, task in zip(entries, existing, strict=True):
            result = (
                from_task(task)
                if task is not None
                else FollowUp(status=500, error=FhirError(f"the follow-up could not be written: {reason}"))
            )
            answered.append((entry.position, batch_entry(result)))
        self.duplicates.note_freed()
        async with self.writes.db_transaction() as conn:
            if await L.finish(conn, list_id, answered):
                await self._schedule_purge(conn, list_id)

    async def _schedule_purge(self, conn: AsyncConnection, list_id: str) -> None:
        """A finished list's status is kept ``LTFU_LIST_RETENTION_SECONDS``, then deleted: committed
        with the write that finishes it, so no finished list is kept forever."""
        due = datetime.now(UTC) + timedelta(seconds=self.settings.ltfu_list_retention_seconds)
        job = NewJob(kind=LIST_PURGE_JOB, target=f"LTFU list {list_id}", payload={"list_id": list_id})
        await enqueue(conn, [job], now=due)

    async def purge(self, list_id: str) -> bool:
        """Delete a finished list's rows (the ``ltfu.list-purge`` job); False if already gone."""
        async with self.writes.db_transaction() as conn:
            return await L.purge(conn, list_id)

    async def status(self, list_id: str, caller: Principal | None = None) -> L.ListStatus | None:
        """A staged list's progress and answers (None: no such list, or not ``caller``'s to see)."""
        async with self.db.connect() as conn:
            found = await L.status(conn, list_id)
        if found is not None and caller is not None and not owners.may_see(caller, found.client_id):
            return None
        return found


def _staged_request(p: Pending) -> Resource:
    """What a staged entry needs to be written later (the requester is resolved again then)."""
    return {
        "service_request": p.request.resource,
        "patient_ref": p.request.patient_ref,
        "requester_ref": p.request.requester_ref,
        "patient_id": str(p.patient["id"]),
        "patient_cht_id": p.patient_cht_id,
        "schema_checked": p.request.schema_checked,
    }


def _unstage_request(stored: Resource) -> tuple[V.FollowUpRequest, str, str]:
    """A staged entry back as (request, patient id, patient CHT id)."""
    request = V.FollowUpRequest(
        resource=stored["service_request"],
        patient_ref=stored["patient_ref"],
        requester_ref=stored["requester_ref"],
        schema_checked=bool(stored.get("schema_checked")),  # False in rows staged before it was kept
    )
    return request, str(stored["patient_id"]), str(stored["patient_cht_id"])
