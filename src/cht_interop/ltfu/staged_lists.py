"""Staged LTFU lists: a long list answered 202 at once, its follow-ups written in the background.

A list longer than ``LTFU_LIST_SYNC_MAX`` (or sent with ``Prefer: respond-async``) is checked
entry by entry now (validation, requester, patient, duplicates) and committed as staged rows, with
the keys that keep its follow-ups from being started twice meanwhile and the ``ltfu.list-write``
jobs that will write it: a turn of entries at a time, every other client's follow-up going on
between two turns (the list has a status once its last turn is in). This module
owns that lifecycle: stage, write a chunk (safe to run again), abandon a chunk, report status,
purge once the retention has passed. The rows themselves are kept by ``lists.py``; the writes
open in ``writes.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db.locks import SessionLock, try_advisory_xact_lock
from cht_interop.delivery.jobs import NewJob
from cht_interop.delivery.outbox import enqueue, make_due
from cht_interop.fhir.client import Resource
from cht_interop.fhir.errors import FhirError
from cht_interop.gateway.principals import Principal
from cht_interop.kit.fair import off_loop, paced
from cht_interop.kit.gc import memory_returned, release
from cht_interop.ltfu import lists as L
from cht_interop.ltfu import owners
from cht_interop.ltfu import validation as V
from cht_interop.ltfu.duplicates import DuplicateCheck, Named, staged_keys
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
# Entries checked and staged per turn of the start lock (``_stage_turn``), each turn its own
# transaction. A 10,000-entry list in one turn held PostgreSQL's start lock 770-860 ms, every
# other client's follow-up waiting (its check ~440 ms, its rows ~190 ms, its COPY ~230 ms), and
# SQLite's one writer ~120 ms; a turn of 500 holds either a twentieth of that.
LIST_TURN_ENTRIES = 500
# A turn's write jobs are due this long after it, unless the list's close makes them due at once:
# written while the list's later turns are staged, they took SQLite's writer and a core from them
# (acceptance of 10,000 entries 1.2 -> 5.3 s). The deadline writes what a killed stager committed.
LIST_JOBS_HELD_SECONDS = 60
# the answer of an entry whose follow-up an earlier turn of its list staged (by either key)
EARLIER_IN_LIST = "this follow-up is earlier in this list (same patient and requester, or identifier)"


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
        will write them (a turn at a time: ``_stage``). One answer per valid entry, in order.
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
        """Check and commit the list a turn of ``LIST_TURN_ENTRIES`` entries at a time, then close
        it (``_close``): from then on it has a status, and its last write marks it done."""
        valid = [p for p in parsed if isinstance(p, V.FollowUpRequest)]
        positions = [n for n, p in enumerate(parsed) if isinstance(p, V.FollowUpRequest)]
        # before the start lock (see there); the Tasks are read under it, each turn (``check``)
        named = await self.duplicates.resolve(valid, with_tasks=False)
        errors = [
            L.EntryRow(n, response=batch_entry(failed(p)))
            for n, p in enumerate(parsed)
            if isinstance(p, FhirError)
        ]
        answers: list[FollowUp] = []
        held_jobs: list[int] = []  # the turns' write jobs, held until the list is closed
        async with self._staging(list_id):
            await self._open(list_id, len(parsed), client_id)
            try:
                for start in range(0, len(valid), LIST_TURN_ENTRIES):
                    end = start + LIST_TURN_ENTRIES
                    answers += await self._stage_turn(
                        list_id, valid[start:end], positions[start:end], named, held_jobs
                    )
            except BaseException:
                # What the turns before accepted stays, and is written: another request may have
                # been answered with one of those follow-ups (``find_staged``). The client is told
                # to retry, and its retry is answered with them.
                with contextlib.suppress(Exception):  # else the next list staged closes it
                    await self._close(list_id, errors, held_jobs, answers)
                raise
            await self._close(list_id, errors, held_jobs, answers)
        # the list's patients are freed off the loop: kit/gc.py
        release(named.patients, named.tasks_by_patient)
        return answers

    async def _stage_turn(
        self,
        list_id: str,
        requests: Sequence[V.FollowUpRequest],
        positions: Sequence[int],
        named: Named,
        held_jobs: list[int],
    ) -> list[FollowUp]:
        """One turn: check these entries holding the start lock, commit their rows, keys and write
        jobs, let the lock go (every other client's follow-up waits for a turn, not for the list).
        The jobs are due only ``LIST_JOBS_HELD_SECONDS`` later, unless the list's close makes
        them due at once (their ids are added to ``held_jobs``)."""
        for attempt in range(2):
            async with self.duplicates.turn() as held:
                results, fresh = await self.duplicates.check(requests, held, named)
                answers = _turn_answers(list_id, results, fresh)
                staged_by_index = {p.index: p for p in fresh}
                rows: list[L.EntryRow] = []
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
                chunk = self.settings.ltfu_list_chunk
                to_write = [positions[p.index] for p in fresh]
                deadline = datetime.now(UTC) + timedelta(seconds=LIST_JOBS_HELD_SECONDS)
                jobs = [
                    NewJob(
                        kind=LIST_WRITE_JOB,
                        target=f"LTFU list {list_id}",
                        payload={"list_id": list_id, "positions": to_write[start : start + chunk]},
                        due=deadline,
                    )
                    for start in range(0, len(to_write), chunk)
                ]
                keys = [(k, p.follow_up_id) async for p in paced(fresh) for k in staged_keys(p)]
                staging = await off_loop(partial(L.staging, list_id, rows, keys), items=len(rows))
                # the rows as the driver inserts them are all the transaction needs
                del rows, keys
                try:
                    async with self.writes.db_transaction() as conn:
                        await L.stage_rows(conn, staging)
                        if staging.key_rows:
                            self.duplicates.note_staged()
                        job_ids = await enqueue(conn, jobs)
                except IntegrityError:
                    if attempt == 0:
                        continue  # another process staged one of these follow-ups meanwhile: check again
                    raise
                held_jobs += job_ids
                # the turn's checked entries and rows are freed off the loop: kit/gc.py
                release(fresh, staging.entry_rows, staging.key_rows)
                return answers
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def _staging(self, list_id: str) -> AsyncIterator[None]:
        """While this process stages the list: on PostgreSQL a session lock of its name tells the
        other replicas it is alive (``_close_abandoned``); on SQLite (one serving process) this
        process's own set does."""
        alive = SessionLock(self.db.engine, _staging_lock(list_id)) if self.db.is_postgresql else None
        self._staging_now.add(list_id)
        try:
            # a new list's id: free (a clash of its 32-bit hash would only leave it unmarked)
            if alive is not None:
                await alive.hold()
            yield
        finally:
            self._staging_now.discard(list_id)
            if alive is not None:
                await alive.release()

    async def _open(self, list_id: str, entry_count: int, client_id: str | None) -> None:
        async with self.writes.db_transaction() as conn:
            await self._close_abandoned(conn)
            await L.open_list(conn, list_id, entry_count, client_id)

    async def _close_abandoned(self, conn: AsyncConnection) -> None:
        """Close the lists whose stager is gone (a process killed between two turns): what its
        turns committed is written by their jobs once due (``LIST_JOBS_HELD_SECONDS`` after
        their turn); closed, the list is marked done by the last."""
        for list_id in await L.still_staging(conn):
            if list_id in self._staging_now:
                continue
            if self.db.is_postgresql and not await try_advisory_xact_lock(conn, _staging_lock(list_id)):
                continue  # its stager is alive, in another replica
            if await L.close_staging(conn, list_id):
                await self._schedule_purge(conn, list_id)

    async def _close(
        self, list_id: str, errors: list[L.EntryRow], held_jobs: list[int], answers: list[FollowUp]
    ) -> None:
        """The list's invalid entries' answers, then its status counts and its write jobs are due;
        a list with nothing to write (no answer of the turns is its own: every entry answered at
        once) is dropped: its answer is final."""
        async with self.writes.db_transaction() as conn:
            if not any(a.list_id == list_id for a in answers):
                await L.drop(conn, list_id)
                return
            if errors:
                await L.stage_rows(conn, L.staging(list_id, errors, []))
            await make_due(conn, held_jobs)
            if await L.close_staging(conn, list_id):
                await self._schedule_purge(conn, list_id)

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


def _staging_lock(list_id: str) -> str:
    return f"cht-interop:ltfu:staging:{list_id}"


def _turn_answers(list_id: str, results: list[FollowUp | None], fresh: list[Pending]) -> list[FollowUp]:
    """A turn's answers: 202 for its fresh entries; 200 for an entry whose follow-up an earlier
    turn of the same list staged (``check`` finds its key) or an earlier entry of this turn."""
    for n, found in enumerate(results):
        if found is not None and found.status == 202 and found.list_id == list_id:
            results[n] = FollowUp(status=200, follow_up_id=found.follow_up_id, note=EARLIER_IN_LIST)
    for p in fresh:
        results[p.index] = FollowUp(status=202, follow_up_id=p.follow_up_id, list_id=list_id)
        for dup in p.duplicates:
            earlier = results[dup]  # ``check`` says why (same patient and requester, or identifier)
            note = earlier.note if earlier is not None and earlier.note else EARLIER_IN_LIST
            results[dup] = FollowUp(status=200, follow_up_id=p.follow_up_id, note=note)
    return finished(results)


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
