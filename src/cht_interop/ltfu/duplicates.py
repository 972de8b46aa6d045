"""The duplicate check: one follow-up per request, however often or from however many lists it comes.

A request whose follow-up exists is answered with that follow-up instead of a second one: same
ServiceRequest identifier, same patient and requester while a follow-up is open, an entry earlier
in the same list, or one a staged list is still writing. The check and the write that follows it
must not interleave with another's, so both run under the one start lock this module owns: an
asyncio lock in this process and, on PostgreSQL, advisory locks across API replicas (a long list
takes the start lock whole, a turn of its entries at a time; a small batch shares it and locks only
the keys it touches, so two replicas start different patients' follow-ups at the same time). On
SQLite a long list takes only its keys (``claims.py``), and so does every batch of singles:
singles for other patients go on while a list is checked and staged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db.locks import advisory_xact_lock, advisory_xact_lock_shared, advisory_xact_locks
from cht_interop.fhir.client import FhirClient, Resource
from cht_interop.fhir.errors import FhirError, ResourceNotFound, VersionConflict
from cht_interop.kit.fair import paced
from cht_interop.ltfu import lists as L
from cht_interop.ltfu import resources as R
from cht_interop.ltfu import validation as V
from cht_interop.ltfu.claims import KeyClaims
from cht_interop.ltfu.lookups import id_chunks
from cht_interop.ltfu.model import FollowUp, Pending, Requester, failed
from cht_interop.ltfu.patients import Patients
from cht_interop.ltfu.requesters import Requesters
from cht_interop.ltfu.writes import LtfuWrites

# advisory lock serialising follow-up starts across API replicas (PostgreSQL): taken exclusively by
# a long list's check, shared by small batches, which then lock only the keys they touch
START_LOCK = "cht-interop:ltfu:follow-up-start"
# the advisory lock space of those keys (``staged_keys``: patient + requester, identifiers)
START_KEY_SPACE = 0x4C544655  # "LTFU"
# A batch of up to this many requests locks its keys (replicas start other patients' follow-ups
# meanwhile); a larger one takes the start lock whole: its keys would crowd PostgreSQL's shared
# lock table. Measured with 2 serves at 8 clients: one lock for all took turns at ~220/s.
KEYED_START_MAX = 64


def staged_keys(p: Pending) -> list[str]:
    """The keys a staged entry holds while it is written: its patient + requester, its identifiers."""
    keys = [L.open_key(str(p.patient["id"]), p.requester.id)]
    keys += [L.identifier_key(V.identifier_token(i)) for i in p.request.resource.get("identifier") or []]
    return keys


@dataclass(frozen=True, slots=True)
class Named:
    """Who a batch of requests names (``DuplicateCheck.resolve``): requester ref -> its
    Organization (or why not), patient ref -> Patient, and the patients' Tasks as read then."""

    requesters: Mapping[str, Requester | FhirError]
    patients: dict[str, Resource]
    tasks_by_patient: dict[str, list[Resource]]


@dataclass(frozen=True, slots=True)
class StartLock:
    """What ``across_processes`` holds: ``keys_on`` is the transaction in which ``check`` must still
    lock its keys (the start lock is only shared); ``claimed``: ``check`` claims its keys in this
    process into it (SQLite), released when the turn ends; both None when nothing more is needed."""

    keys_on: AsyncConnection | None
    claimed: set[str] | None = None


class DuplicateCheck:
    """One per process: holds the start lock, and what it knows of staged keys."""

    def __init__(
        self, fhir: FhirClient, writes: LtfuWrites, requesters: Requesters, patients: Patients
    ) -> None:
        self.fhir = fhir
        self.writes = writes
        self.requesters = requesters
        self.patients = patients
        # Dedup check and write must not interleave: one lock per process serialises them (SQLite
        # serialises writers anyway). Intake's group commit runs its batches under it too.
        self.lock = asyncio.Lock()
        # SQLite: the keys claimed by the checks under way (a long list does not take ``lock``)
        self.claims = KeyClaims()
        # False once no staged keys were seen (SQLite only, see _may_have_staged); None: not known
        self._staged_possible: bool | None = None
        # lists that began staging keys in this process (``note_staged``): a check that saw none
        # staged compares it after claiming its keys (``check``)
        self._stagings = 0

    # -- the start lock ----------------------------------------------------------------------------

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[StartLock]:
        """A turn of a long list (``staged_lists.LIST_TURN_ENTRIES`` entries): check and stage them
        in it. On PostgreSQL this process's lock, then the start lock across processes, whole (a
        turn's ~1,000 keys as advisory locks would crowd PostgreSQL's shared lock table): every
        other follow-up waits for a turn, not for the list. On SQLite only the keys the turn
        touches (``check`` claims them): the start lock held everyone's follow-ups ~0.23 s for
        10,000 entries (see docs/performance.md, 2026-12-07), while it conflicts only with those
        of its patients."""
        if not self.writes.db.is_postgresql:
            async with self.across_processes() as held:
                yield held
            return
        async with self.lock, self.across_processes() as held:
            yield held

    @asynccontextmanager
    async def across_processes(self, requests: int | None = None) -> AsyncIterator[StartLock]:
        """On PostgreSQL, API replicas take turns too: transaction-scoped advisory locks, held from
        the duplicate check to the commit of the follow-ups (the asyncio lock only covers this
        process). ``requests``: a batch of at most ``KEYED_START_MAX`` shares the start lock and
        ``check`` then locks the keys its requests touch; otherwise (or None) the start lock is
        taken whole. The embedded SQLite database has one serving process by design: no lock."""
        if not self.writes.db.is_postgresql:
            claimed: set[str] = set()
            try:
                yield StartLock(None, claimed)
            finally:
                self.claims.release(claimed)
            return
        async with self.writes.db_transaction() as conn:
            if requests is not None and requests <= KEYED_START_MAX:
                await advisory_xact_lock_shared(conn, START_LOCK)
                yield StartLock(conn)
            else:
                await advisory_xact_lock(conn, START_LOCK)
                yield StartLock(None)

    # -- the check ---------------------------------------------------------------------------------

    async def resolve(self, requests: Sequence[V.FollowUpRequest], with_tasks: bool = True) -> Named:
        """The requesters and patients ``requests`` name (and, ``with_tasks``, the patients' Tasks).
        A long list resolves them before taking the start lock (``check``): follow-up starts never
        change who they are (registrations and the CHT's pushes do), and for 10,000 entries this
        was half the time the list held the lock, with every other client's follow-up waiting."""
        requesters = await self.requesters.resolve({r.requester_ref for r in requests})
        patients, tasks_by_patient = await self.patients.resolve(
            {r.patient_ref for r in requests}, with_tasks=with_tasks
        )
        return Named(requesters, patients, tasks_by_patient)

    async def check(
        self,
        requests: Sequence[V.FollowUpRequest],
        held: StartLock | None = None,
        named: Named | None = None,
    ) -> tuple[list[FollowUp | None], list[Pending]]:
        """Answer errors and duplicates; the rest is to start. Call it holding the start lock
        (``turn``, ``across_processes``: pass what it yielded), and write what it returns before
        letting go. ``named``: what ``resolve`` found before the lock (else resolved here); the
        patients' Tasks are then read again under the lock, as follow-up starts change them.

        Staged keys are read BEFORE the Tasks. A staged list's chunk commits its Tasks, then frees
        their keys (``lists.finish``): a check reading the Tasks first and the keys after could
        miss a follow-up committed and freed in between. Keys first, Tasks after, finds it in one
        or the other. So Tasks read before the keys (``named``'s, those the keyed path read before
        locking its keys) are read again after them; and Tasks read with the patients (``resolve``
        under the lock) are trusted only when no key was staged at all when the check began, and
        none since once its keys are held. On PostgreSQL lists stage only under the start lock
        taken whole, which this check holds (shared or whole) from before the probe; on SQLite a
        list stages only holding its keys' claims, so one staging this check's keys either did
        before the check claimed them (``_stagings`` moved: keys and Tasks are read again) or
        waits for the check to let go. Either way no staged list can be between its Tasks'
        commit and its keys' free for this check's keys while it runs. On SQLite the probe is
        usually the cached answer of ``_may_have_staged`` (no read at all)."""
        results: list[FollowUp | None] = [None] * len(requests)
        keyed = held is not None and held.keys_on is not None
        claimed = held.claimed if held is not None else None
        tasks_stale = named is not None or keyed
        stagings = self._stagings
        staged_possible = await self._may_have_staged(probe=not tasks_stale)
        if not tasks_stale and staged_possible:
            tasks_stale = True  # the Tasks are read after the staged keys: not with the patients
        named = named or await self.resolve(requests, with_tasks=not tasks_stale)
        pending: list[Pending] = []
        async for i, r in paced(enumerate(requests)):  # a long list's: see kit/fair.py
            requester = named.requesters[r.requester_ref]
            patient = named.patients.get(r.patient_ref)
            if isinstance(requester, FhirError):
                results[i] = failed(requester)
            elif patient is None:
                error = ResourceNotFound(
                    f"Patient {r.patient_ref} is not known yet: the CHT has not pushed this patient "
                    "(or it does not exist). Retry later."
                )
                results[i] = FollowUp(status=404, error=error)
            else:
                cht_id = R.first_identifier_value(patient, V.CHT_SYSTEM) or r.patient_ref
                pending.append(Pending(i, r, patient, cht_id, requester))
        if held is not None and held.keys_on is not None and pending:
            # The start lock is shared: lock this batch's keys, then read the patients' Tasks again
            # (those read above may predate another replica's commit for the same patient).
            keys = sorted({k for p in pending for k in staged_keys(p)})
            await advisory_xact_locks(held.keys_on, START_KEY_SPACE, keys)
        elif claimed is not None and pending:
            # SQLite: claim this batch's keys (a long list checks and stages holding only its own).
            # Tasks read with the patients still hold: single batches and short lists take turns
            # under ``lock``, and a long list writes no Task, only staged keys, under its claims.
            keys = [k async for p in paced(pending) for k in staged_keys(p)]
            await self.claims.take(keys, claimed)
        if not staged_possible and self._stagings != stagings:
            # A list staged keys since the probe (on SQLite, holding only its own keys' claims):
            # read them, and the Tasks after them, as if some had been staged from the start.
            staged_possible = tasks_stale = True
        if staged_possible:
            pending = await self._staged_duplicates(pending, results)
        tasks_by_patient = named.tasks_by_patient
        if tasks_stale and pending:
            tasks_by_patient = await self.patients.tasks_of({str(p.patient["id"]) for p in pending})
        fresh = await self._deduplicate(pending, results, tasks_by_patient)
        return results, fresh

    async def _deduplicate(
        self,
        pending: list[Pending],
        results: list[FollowUp | None],
        tasks_by_patient: dict[str, list[Resource]],
    ) -> list[Pending]:
        """Answer entries whose follow-up exists (same identifier, or same patient + requester while
        open, or earlier in this list) with it; return the rest. The staged keys were looked at
        before ``tasks_by_patient`` was read (``check``)."""
        by_identifier: dict[str, Resource] = {}
        tokens = sorted(
            {
                V.identifier_token(i)
                async for p in paced(pending)
                for i in p.request.resource.get("identifier") or []
            }
        )
        for chunk in id_chunks(self.fhir, tokens):
            for sr in await self.fhir.search_all(
                "ServiceRequest", [("identifier", ",".join(chunk)), ("_count", str(len(chunk) * 2))]
            ):
                for identifier in sr.get("identifier") or []:
                    by_identifier.setdefault(V.identifier_token(identifier), sr)
        open_tasks: dict[tuple[str, str], Resource] = {}
        # the patients' Tasks came with them; status and requester are checked here: conditions on
        # them match many Tasks and only make the store's query plans worse (PostgreSQL especially)
        async for p in paced(pending):
            for task in tasks_by_patient.get(str(p.patient["id"]), []):
                if task.get("status") not in R.OPEN_TASK_STATUSES:
                    continue
                if R.first_identifier_value(task, R.FOLLOW_UP_SYSTEM) is None:
                    continue  # not one of our follow-ups
                pid = R.ref_id(task.get("for"), "Patient")
                org_id = R.ref_id(task.get("requester"), "Organization")
                if pid is not None and org_id is not None:
                    open_tasks.setdefault((pid, org_id), task)
        tasks_for_sr: dict[str, Resource] = {}
        sr_ids = sorted({str(sr["id"]) for sr in by_identifier.values()})
        for chunk in id_chunks(self.fhir, sr_ids):
            for task in await self.fhir.search_all(
                "Task",
                [
                    ("based-on", ",".join(f"ServiceRequest/{i}" for i in chunk)),
                    ("_count", str(len(chunk) * 2)),
                ],
            ):
                sr_id = R.task_service_request_id(task)
                if sr_id is not None:
                    tasks_for_sr.setdefault(sr_id, task)
        fresh: list[Pending] = []
        first_in_list: dict[tuple[str, str], Pending] = {}
        first_with_identifier: dict[str, Pending] = {}
        async for p in paced(pending):
            key = (str(p.patient["id"]), p.requester.id)
            tokens = [V.identifier_token(i) for i in p.request.resource.get("identifier") or []]
            existing_task: Resource | None = None
            note = "an open follow-up for this patient and requester exists: returned it"
            same_sr: Resource | None = None
            for identifier in p.request.resource.get("identifier") or []:
                same_sr = by_identifier.get(V.identifier_token(identifier))
                if same_sr is not None:
                    existing_task = tasks_for_sr.get(str(same_sr["id"]))
                    note = "a ServiceRequest with this identifier exists: returned its follow-up"
                    break
            if same_sr is not None and existing_task is None:
                results[p.index] = FollowUp(
                    status=409,
                    error=VersionConflict(
                        f"ServiceRequest/{same_sr['id']} has this identifier but no follow-up "
                        "(it was not created through the mediator)"
                    ),
                )
                continue
            if existing_task is None:
                existing_task = open_tasks.get(key)
            if existing_task is not None:
                results[p.index] = FollowUp(
                    status=200,
                    service_request_id=R.task_service_request_id(existing_task),
                    task_id=existing_task.get("id"),
                    subscription_id=R.task_subscription_id(existing_task),
                    note=note,
                )
            elif earlier := next(
                (first_with_identifier[t] for t in tokens if t in first_with_identifier), None
            ):
                # one identifier, one ServiceRequest: whoever the patient (as for separate requests)
                results[p.index] = FollowUp(
                    status=200, note="a ServiceRequest with this identifier earlier in this list"
                )
                earlier.duplicates.append(p.index)
            elif key in first_in_list:
                results[p.index] = FollowUp(
                    status=200, note="same patient and requester earlier in this list"
                )
                first_in_list[key].duplicates.append(p.index)
            else:
                first_in_list[key] = p
                first_with_identifier.update((t, p) for t in tokens)
                fresh.append(p)
        return fresh

    # -- follow-ups a staged list is writing -------------------------------------------------------

    async def _staged_duplicates(
        self, pending: list[Pending], results: list[FollowUp | None]
    ) -> list[Pending]:
        """Answer 202 the entries whose follow-up a staged list is still writing; return the rest."""
        if not pending:
            return pending
        keys = [staged_keys(p) async for p in paced(pending)]
        async with self.writes.db.connect() as conn:
            found = await L.find_staged(conn, (k for of_p in keys for k in of_p))
        if not found:
            return pending
        rest: list[Pending] = []
        async for p, of_p in paced(zip(pending, keys, strict=True)):
            hit = next((found[k] for k in of_p if k in found), None)
            if hit is None:
                rest.append(p)
                continue
            results[p.index] = FollowUp(
                status=202,
                follow_up_id=hit.follow_up_id,
                list_id=hit.list_id,
                # what the Subscription will be: the reference's clients read its criteria
                subscription=R.new_subscription(p.patient_cht_id, p.requester.address),
                note=f"this follow-up is being written from LTFU list {hit.list_id}: returned it",
            )
        return rest

    async def _may_have_staged(self, probe: bool) -> bool:
        """Whether staged keys may exist (call holding the start lock). On SQLite (one serving
        process by design) this process stages every list, so once it has seen none it needs no
        look-up (nor a connection) per request until it stages one; on PostgreSQL another replica
        may stage one: look (``probe``: one index probe; else say True and let the keys be read)."""
        db = self.writes.db
        if db.is_postgresql:
            if not probe:
                return True
            async with db.connect() as conn:
                return await L.any_staged(conn)
        if self._staged_possible is None:
            stagings = self._stagings
            async with db.connect() as conn:
                found = await L.any_staged(conn)
            if self._stagings == stagings:  # else a list staged meanwhile: it said True
                self._staged_possible = found
        return self._staged_possible is not False

    def note_staged(self) -> None:
        """A list is staging keys (call inside its transaction, before it commits)."""
        self._staged_possible = True
        self._stagings += 1

    def note_freed(self) -> None:
        """A list may have freed its last keys: look again before trusting that none are staged."""
        self._staged_possible = None
