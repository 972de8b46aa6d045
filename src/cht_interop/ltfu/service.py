"""The LTFU workflow: register requesters, receive CHT pushes, start, complete and cancel follow-ups.

Everything goes through ``services.fhir`` (the FhirClient), so the workflow runs the same on the
embedded store and on HAPI. The write that starts a follow-up — ServiceRequest, Task, Subscription
and the CHT-submission job — is one FHIR transaction (one DB transaction in-process) before the
client hears 201. A list of 10,000 is resolved with a few batched searches and written in one
transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cht_interop.db import Database
from cht_interop.db.locks import advisory_xact_lock
from cht_interop.delivery.jobs import NewJob
from cht_interop.delivery.outbox import enqueue
from cht_interop.fhir.client import FhirClient, Resource, WriteResult
from cht_interop.fhir.errors import (
    FhirError,
    InvalidRequest,
    IssueSeverity,
    IssueType,
    ResourceGone,
    ResourceNotFound,
    VersionConflict,
    operation_outcome,
)
from cht_interop.fhir.validation import check_resource
from cht_interop.kit.coalescer import BatchAbandoned, Coalescer
from cht_interop.kit.gc import GC_PAUSE_ENTRIES, gc_paused
from cht_interop.ltfu import lists as L
from cht_interop.ltfu import resources as R
from cht_interop.ltfu import validation as V
from cht_interop.services import Services
from cht_interop.settings import Settings

CHT_RECORD_JOB = "cht.record"
EXPIRY_JOB = "ltfu.follow-up-expiry"
SUBSCRIPTION_OFF_JOB = "ltfu.subscription-off"
LIST_WRITE_JOB = "ltfu.list-write"
LIST_PURGE_JOB = "ltfu.list-purge"
# How long a resolved requester (Organization + Endpoint address) is reused; a changed callback
# address reaches new follow-ups after at most this long.
REQUESTER_CACHE_SECONDS = 5.0
# Under load, how long a batch of single follow-up requests waits for company (group commit).
START_LINGER_SECONDS = 0.002
_PROCESS_STARTED = time.monotonic()
# advisory lock serialising follow-up starts across API replicas (PostgreSQL)
START_LOCK = "cht-interop:ltfu:follow-up-start"


SEARCHES_AT_ONCE = 4  # pooled connections one long list's look-up may use at once


def job_ordering_key(follow_up_id: str) -> str:
    """Follow-up record and cancel record of one follow-up go to the CHT in that order."""
    return f"ltfu:{follow_up_id}"


@dataclass(slots=True)
class Requester:
    organization: Resource
    identifier: str
    address: str

    @property
    def id(self) -> str:
        return str(self.organization["id"])

    @property
    def name(self) -> str:
        name = self.organization.get("name")
        return name if isinstance(name, str) else self.identifier


@dataclass(slots=True)
class FollowUp:
    """One entry's answer: a started (201) or an existing (200) follow-up, one being written from a
    staged list (202), or an error."""

    status: int
    service_request_id: str | None = None
    task_id: str | None = None
    subscription_id: str | None = None
    subscription: Resource | None = None
    error: FhirError | None = None
    note: str | None = None
    follow_up_id: str | None = None
    list_id: str | None = None  # the staged list writing it (202)


@dataclass(slots=True)
class ListAnswer:
    """The answer to an LTFU list: 200 when written; 202 when staged (``list_id`` tells its status)."""

    status: int
    bundle: Resource
    list_id: str | None = None


@dataclass(slots=True)
class _Pending:
    index: int
    request: V.FollowUpRequest
    patient: Resource
    patient_cht_id: str
    requester: Requester
    follow_up_id: str = field(default_factory=R.new_follow_up_id)
    duplicates: list[int] = field(default_factory=list)  # later entries of the list for the same follow-up


class LtfuService:
    """One per process (it holds the lock that keeps concurrent duplicates out)."""

    def __init__(
        self,
        fhir: FhirClient,
        settings: Settings,
        *,
        db: Database | None = None,
        search_chunk: int | None = None,
    ) -> None:
        self.fhir = fhir
        self.settings = settings
        self.db = db  # staged lists live here (always our own database, whatever the FHIR server)
        # the embedded store (else an external FHIR server such as HAPI, over HTTP)
        self.in_process = getattr(fhir, "store", None) is not None
        # Batched lookups put many ids in one search; over HTTP they go in the URL (HAPI: ~8 kB).
        self.search_chunk = search_chunk or (400 if self.in_process else 100)
        # Dedup check and write must not interleave: one lock per process serialises them (SQLite
        # serialises writers anyway). Single requests waiting for it are taken together, so a
        # burst of them costs one lookup round and one transaction (group commit).
        self._start_lock = asyncio.Lock()
        self._start_grouped = Coalescer(
            self._start_locked, lock=self._start_lock, linger=START_LINGER_SECONDS
        )
        self.find_task = Coalescer(self.find_tasks)
        # False once no staged keys were seen (SQLite only, see _may_have_staged); None: not known
        self._staged_possible: bool | None = None
        # organization identifier → (valid until, requester): a burst of requests resolves it once
        self._requesters: dict[str, tuple[float, Requester]] = {}

    # -- status ------------------------------------------------------------------------------------

    @staticmethod
    def status() -> dict[str, Any]:
        """``GET /mediator/``: the reference's liveness answer."""
        try:
            with open("/proc/uptime", encoding="ascii") as f:
                os_uptime = float(f.read().split()[0])
        except OSError:
            os_uptime = time.monotonic()
        return {
            "status": "success",
            "osuptime": os_uptime,
            "processuptime": time.monotonic() - _PROCESS_STARTED,
        }

    # -- Endpoint / Organization -------------------------------------------------------------------

    async def register_endpoint(self, body: Any) -> WriteResult:
        """Create the Endpoint, or update the one with the same identifier (200)."""
        endpoint = V.validate_endpoint(body, allow_private=self.settings.allow_private_callbacks)
        self._requesters.clear()
        await self._check_resolved_address(endpoint["address"])
        return await self._upsert_by_identifier(endpoint, endpoint["identifier"][0])

    async def _check_resolved_address(self, address: str) -> None:
        """A public-looking name may still resolve inward; refuse it unless private callbacks are allowed."""
        if self.settings.allow_private_callbacks:
            return
        host = urlsplit(address).hostname or ""
        try:
            ipaddress.ip_address(host.strip("[]"))
            return  # literal addresses were judged by the validator
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout=3)
        except (OSError, TimeoutError):
            return  # cannot tell now; delivery will fail visibly if it never resolves
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if V.address_is_private(ip):
                raise V.invalid(
                    f'"address" resolves to a private or loopback address ({host} → {ip}); such '
                    "callbacks are refused unless ALLOW_PRIVATE_CALLBACKS is set",
                    "Endpoint.address",
                )

    async def register_organization(self, body: Any) -> WriteResult:
        """Create the Organization (its Endpoint must exist), or update the one with the same identifier."""
        organization, endpoint_id = V.validate_organization(body)
        self._requesters.clear()
        try:
            await self.fhir.read("Endpoint", endpoint_id)
        except (ResourceNotFound, ResourceGone):
            raise V.invalid(f"Endpoint/{endpoint_id} not found", "Organization.endpoint[0]") from None
        identifiers = organization.get("identifier") or []
        if not identifiers:
            return await self.fhir.create(organization)
        return await self._upsert_by_identifier(organization, identifiers[0])

    async def _upsert_by_identifier(self, resource: Resource, identifier: dict[str, Any]) -> WriteResult:
        rtype = resource["resourceType"]
        token = V.identifier_token(identifier)
        result = await self.fhir.create(dict(resource), if_none_exist=f"identifier={token}")
        if result.created:
            return result
        existing = result.resource
        return await self.fhir.update({**resource, "id": existing["id"], "resourceType": rtype})

    # -- Patient -----------------------------------------------------------------------------------

    async def upsert_patient(self, body: Any) -> WriteResult:
        """The CHT's outbound push: one Patient per CHT id, updated on every re-push."""
        patient, cht_id = V.validate_patient(body)
        return await self._upsert_by_identifier(patient, {"system": V.CHT_SYSTEM, "value": cht_id})

    # -- follow-ups --------------------------------------------------------------------------------

    def schema_checked(self, request: V.FollowUpRequest) -> V.FollowUpRequest:
        """The request after the embedded store's R4 check (lenient, HAPI-like; 400 on a bad
        element). With an external FHIR server that server checks it: returned unchanged."""
        if request.schema_checked or not self.in_process:
            return request
        check_resource(request.resource, "ServiceRequest")
        return dataclasses.replace(request, schema_checked=True)

    async def request_follow_up(self, body: Any) -> FollowUp:
        """One ServiceRequest: 201 with a new follow-up, 200 with the existing one; errors raise."""
        # checked before the batch: this CPU work overlaps the running batch's database waits
        request = self.schema_checked(V.validate_service_request(body))
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
            result.subscription = await self.fhir.read("Subscription", result.subscription_id)
        return result

    async def request_follow_up_list(self, bundle: Any, *, respond_async: bool = False) -> ListAnswer:
        """An LTFU list (batch/transaction/collection Bundle of ServiceRequests) → batch-response.

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
        # a long list keeps tens of thousands of objects alive to the end: the collector's full
        # passes over them took 40% of a 10,000-entry list's acceptance (measured)
        async with gc_paused(len(entries) >= GC_PAUSE_ENTRIES):
            return await self._follow_up_list(entries, respond_async)

    async def _follow_up_list(self, entries: list[Any], respond_async: bool) -> ListAnswer:
        parsed: list[V.FollowUpRequest | FhirError] = []
        for entry in entries:
            try:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if resource is None:
                    raise V.invalid('"entry.resource" is required', "Bundle.entry")
                parsed.append(V.validate_service_request(resource))
            except FhirError as exc:
                parsed.append(exc)
        valid = [p for p in parsed if isinstance(p, V.FollowUpRequest)]
        staged = self.db is not None and (respond_async or len(valid) > self.settings.ltfu_list_sync_max)
        if staged:
            list_id = str(uuid.uuid4())
            started = iter(await self._stage_list(list_id, parsed) if valid else [])
        else:
            list_id = None
            started = iter(await self._start(valid) if valid else [])
        results: list[FollowUp] = []
        for p in parsed:
            results.append(
                FollowUp(status=int(p.status), error=p) if isinstance(p, FhirError) else next(started)
            )
        if staged and not any(r.list_id == list_id for r in results):
            staged = False  # nothing of this list to write: its answer is final now
        bundle = {
            "resourceType": "Bundle",
            "id": list_id or str(uuid.uuid4()),
            "type": "batch-response",
            "entry": [_batch_entry(r) for r in results],
        }
        return ListAnswer(202 if staged else 200, bundle, list_id if staged else None)

    async def _start(self, requests: Sequence[V.FollowUpRequest]) -> list[FollowUp]:
        async with self._start_lock:
            return await self._start_locked(requests)

    async def _start_locked(self, requests: Sequence[V.FollowUpRequest]) -> list[FollowUp]:
        async with self._across_processes():
            results, fresh = await self._check_locked(requests)
            if fresh:
                await self._write(fresh, results)
        return _finished(results)

    @asynccontextmanager
    async def _across_processes(self) -> AsyncIterator[None]:
        """On PostgreSQL, API replicas take turns too: a transaction-scoped advisory lock, held
        from the duplicate check to the commit of the follow-ups (the asyncio lock only covers
        this process). The embedded SQLite database has one serving process by design."""
        if self.db is None or not self.db.is_postgresql:
            yield
            return
        async with self.db.transaction() as conn:
            await advisory_xact_lock(conn, START_LOCK)
            yield

    async def _check_locked(
        self, requests: Sequence[V.FollowUpRequest]
    ) -> tuple[list[FollowUp | None], list[_Pending]]:
        """Resolve requesters and patients, answer errors and duplicates; the rest is to start."""
        results: list[FollowUp | None] = [None] * len(requests)
        requesters = await self._resolve_requesters({r.requester_ref for r in requests})
        patients, tasks_by_patient = await self._resolve_patients({r.patient_ref for r in requests})
        pending: list[_Pending] = []
        for i, r in enumerate(requests):
            requester = requesters[r.requester_ref]
            patient = patients.get(r.patient_ref)
            if isinstance(requester, FhirError):
                results[i] = FollowUp(status=int(requester.status), error=requester)
            elif patient is None:
                error = ResourceNotFound(
                    f"Patient {r.patient_ref} is not known yet: the CHT has not pushed this patient "
                    "(or it does not exist). Retry later."
                )
                results[i] = FollowUp(status=404, error=error)
            else:
                cht_id = R.first_identifier_value(patient, V.CHT_SYSTEM) or r.patient_ref
                pending.append(_Pending(i, r, patient, cht_id, requester))
        fresh = await self._deduplicate(pending, results, tasks_by_patient)
        return results, fresh

    async def _resolve_requesters(self, refs: Iterable[str]) -> dict[str, Requester | FhirError]:
        out: dict[str, Requester | FhirError] = {}
        now = time.monotonic()
        for ref in refs:
            cached = self._requesters.get(ref)
            if cached is not None and cached[0] > now:
                out[ref] = cached[1]
                continue
            try:
                requester = await self._requester(ref)
            except FhirError as exc:
                out[ref] = exc
            else:
                out[ref] = requester
                self._requesters[ref] = (now + REQUESTER_CACHE_SECONDS, requester)
        return out

    async def _requester(self, ref: str) -> Requester:
        found = await self.fhir.search_all("Organization", [("identifier", ref)])
        organization = found[0] if found else None
        if organization is None:
            try:
                organization = await self.fhir.read("Organization", ref)
            except (ResourceNotFound, ResourceGone, InvalidRequest):
                raise ResourceNotFound(
                    f"Organization not found: no Organization with identifier {ref}"
                ) from None
        endpoint_id = None
        for endpoint in organization.get("endpoint") or []:
            endpoint_id = R.ref_id(endpoint, "Endpoint")
            if endpoint_id:
                break
        if endpoint_id is None:
            raise InvalidRequest("Organization has no endpoint attached")
        try:
            endpoint = await self.fhir.read("Endpoint", endpoint_id)
        except (ResourceNotFound, ResourceGone):
            raise InvalidRequest(f"Organization's Endpoint/{endpoint_id} no longer exists") from None
        address = endpoint.get("address")
        if not isinstance(address, str) or not address:
            raise InvalidRequest(f"Organization's Endpoint/{endpoint_id} has no address")
        if endpoint.get("status") not in (None, "active"):
            raise InvalidRequest(
                f"Organization's Endpoint/{endpoint_id} is {endpoint.get('status')}, not active"
            )
        identifier = R.first_identifier_value(organization) or ref
        return Requester(organization, identifier, address)

    async def _resolve_patients(
        self, refs: set[str]
    ) -> tuple[dict[str, Resource], dict[str, list[Resource]]]:
        """``Patient/<x>`` as the reference reads it: identifier value x (any system); else id x.

        The patients' Tasks come in the same search (``_revinclude``), for the duplicate check.
        """
        out: dict[str, Resource] = {}
        tasks: dict[str, list[Resource]] = {}

        def take(found: list[Resource], key_of: Any) -> None:
            for resource in found:
                if resource.get("resourceType") == "Task":
                    pid = R.ref_id(resource.get("for"), "Patient")
                    if pid is not None:
                        tasks.setdefault(pid, []).append(resource)
                    continue
                for key in key_of(resource):
                    if key in refs and key not in out:
                        out[key] = resource

        def identifier_values(patient: Resource) -> list[Any]:
            return [i.get("value") for i in patient.get("identifier") or [] if isinstance(i, dict)]

        revinclude = ("_revinclude", "Task:patient")
        by_identifier = [
            [("identifier", ",".join(chunk)), revinclude, ("_count", str(len(chunk) * 2))]
            for chunk in _chunks(sorted(refs), self.search_chunk)
        ]
        for found in await self._search_each("Patient", by_identifier):
            take(found, identifier_values)
        missing = [r for r in refs if r not in out and V._FHIR_ID.match(r)]
        by_id = [
            [("_id", ",".join(chunk)), revinclude, ("_count", str(len(chunk)))]
            for chunk in _chunks(sorted(missing), self.search_chunk)
        ]
        for found in await self._search_each("Patient", by_id):
            take(found, lambda p: [p["id"]])
        return out, tasks

    async def _search_each(self, rtype: str, searches: list[list[tuple[str, str]]]) -> list[list[Resource]]:
        """Every search's matches, in order. A long list's chunks are searched a few at a time
        (separate pooled connections): on PostgreSQL a 10,000-entry list's patient look-up spent
        more time waiting on its 20 round trips, one after the other, than in Python."""
        if len(searches) <= 1:
            return [await self.fhir.search_all(rtype, params) for params in searches]
        gate = asyncio.Semaphore(SEARCHES_AT_ONCE)

        async def one(params: list[tuple[str, str]]) -> list[Resource]:
            async with gate:
                return await self.fhir.search_all(rtype, params)

        return list(await asyncio.gather(*(one(params) for params in searches)))

    async def _deduplicate(
        self,
        pending: list[_Pending],
        results: list[FollowUp | None],
        tasks_by_patient: dict[str, list[Resource]],
    ) -> list[_Pending]:
        """Answer entries whose follow-up exists (same identifier, or same patient + requester while
        open, or earlier in this list) with it; return the rest."""
        # Staged keys first: a staged list frees them only after its follow-ups are committed, so
        # looking here before the FHIR store can never miss one that is between the two.
        pending = await self._staged_duplicates(pending, results)
        by_identifier: dict[str, Resource] = {}
        tokens = sorted(
            {V.identifier_token(i) for p in pending for i in p.request.resource.get("identifier") or []}
        )
        for chunk in _chunks(tokens, self.search_chunk):
            for sr in await self.fhir.search_all(
                "ServiceRequest", [("identifier", ",".join(chunk)), ("_count", str(len(chunk) * 2))]
            ):
                for identifier in sr.get("identifier") or []:
                    by_identifier.setdefault(V.identifier_token(identifier), sr)
        open_tasks: dict[tuple[str, str], Resource] = {}
        # the patients' Tasks came with them; status and requester are checked here: conditions on
        # them match many Tasks and only make the store's query plans worse (PostgreSQL especially)
        for p in pending:
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
        for chunk in _chunks(sr_ids, self.search_chunk):
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
        fresh: list[_Pending] = []
        first_in_list: dict[tuple[str, str], _Pending] = {}
        for p in pending:
            key = (str(p.patient["id"]), p.requester.id)
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
            elif key in first_in_list:
                results[p.index] = FollowUp(
                    status=200, note="same patient and requester earlier in this list"
                )
                first_in_list[key].duplicates.append(p.index)
            else:
                first_in_list[key] = p
                fresh.append(p)
        return fresh

    async def _staged_duplicates(
        self, pending: list[_Pending], results: list[FollowUp | None]
    ) -> list[_Pending]:
        """Answer 202 the entries whose follow-up a staged list is still writing; return the rest."""
        if self.db is None or not pending or not await self._may_have_staged():
            return pending
        keys = [_staged_keys(p) for p in pending]
        async with self.db.connect() as conn:
            found = await L.find_staged(conn, (k for of_p in keys for k in of_p))
        if not found:
            return pending
        rest: list[_Pending] = []
        for p, of_p in zip(pending, keys, strict=True):
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

    async def _may_have_staged(self) -> bool:
        """Whether staged keys may exist. On SQLite (one serving process by design) this process
        stages every list, so once it has seen none it needs no look-up (nor a connection) per
        request until it stages one; on PostgreSQL another replica may stage one: always look."""
        if self.db is None or self.db.is_postgresql:
            return True
        if self._staged_possible is None:
            async with self.db.connect() as conn:
                self._staged_possible = await L.any_staged(conn)
        return self._staged_possible

    # -- staged lists ------------------------------------------------------------------------------

    async def _stage_list(
        self, list_id: str, parsed: Sequence[V.FollowUpRequest | FhirError]
    ) -> list[FollowUp]:
        """Check every valid entry now; commit answers, staged entries, their keys and the jobs that
        will write them in one transaction. One answer per valid entry, in order."""
        assert self.db is not None
        valid = [p for p in parsed if isinstance(p, V.FollowUpRequest)]
        positions = [n for n, p in enumerate(parsed) if isinstance(p, V.FollowUpRequest)]
        for attempt in range(2):
            async with self._start_lock, self._across_processes():
                results, fresh = await self._check_locked(valid)
                for p in fresh:
                    results[p.index] = FollowUp(status=202, follow_up_id=p.follow_up_id, list_id=list_id)
                    for dup in p.duplicates:
                        results[dup] = FollowUp(
                            status=200,
                            follow_up_id=p.follow_up_id,
                            note="same patient and requester earlier in this list",
                        )
                answers = _finished(results)
                if not fresh:  # every entry answered now: the answer is final, nothing to keep
                    return answers
                staged_by_index = {p.index: p for p in fresh}
                rows = [
                    L.EntryRow(n, response=_batch_entry(FollowUp(int(p.status), error=p)))
                    for n, p in enumerate(parsed)
                    if isinstance(p, FhirError)
                ]
                for index, answer in enumerate(answers):
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
                        rows.append(L.EntryRow(positions[index], response=_batch_entry(answer)))
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
                keys = [(k, p.follow_up_id) for p in fresh for k in _staged_keys(p)]
                try:
                    async with self.db.transaction() as conn:
                        self._staged_possible = True if keys else self._staged_possible
                        await L.stage(conn, list_id, rows, keys)
                        await enqueue(conn, jobs)
                except IntegrityError:
                    if attempt == 0:
                        continue  # another process staged one of these follow-ups meanwhile: check again
                    raise
                return answers
        raise AssertionError("unreachable")

    async def write_staged(self, list_id: str, positions: Sequence[int]) -> str:
        """The background job of a staged list: write these entries' follow-ups, record the answers.

        Safe to run again after a crash: follow-ups whose Task exists (found by the follow-up id
        chosen at staging) are answered from it, not written twice.
        """
        assert self.db is not None
        async with self.db.connect() as conn:
            entries = await L.load_staged(conn, list_id, positions)
        if not entries:
            return "nothing left to write"
        existing = await self.find_tasks([e.follow_up_id for e in entries])
        results: list[FollowUp | None] = [None] * len(entries)
        requests = [_unstage_request(e.request) for e in entries]
        requesters = await self._resolve_requesters({r.requester_ref for r, _pid, _cht in requests})
        pending: list[_Pending] = []
        for n, (entry, task, (request, patient_id, cht_id)) in enumerate(
            zip(entries, existing, requests, strict=True)
        ):
            requester = requesters[request.requester_ref]
            if task is not None:
                results[n] = _from_task(task)
            elif isinstance(requester, FhirError):
                results[n] = FollowUp(status=int(requester.status), error=requester)
            else:
                pending.append(
                    _Pending(
                        n, request, {"id": patient_id}, cht_id, requester, follow_up_id=entry.follow_up_id
                    )
                )
        if pending:
            await self._write(pending, results)
        answers = _finished(results)
        async with self.db.transaction() as conn:
            self._staged_possible = None  # look again: was that the last staged list?
            complete = await L.finish(
                conn, list_id, [(e.position, _batch_entry(a)) for e, a in zip(entries, answers, strict=True)]
            )
            if complete:
                await self._schedule_purge(conn, list_id)
        written = sum(1 for a in answers if a.status == 201)
        return f"{written} of {len(entries)} follow-up(s) written" + (" (list complete)" if complete else "")

    async def abandon_staged(self, list_id: str, positions: Sequence[int], reason: str) -> None:
        """A list-write job gave up: its entries still staged answer 500 and free their keys."""
        assert self.db is not None
        async with self.db.connect() as conn:
            entries = await L.load_staged(conn, list_id, positions)
        existing = await self.find_tasks([e.follow_up_id for e in entries])
        answered: list[tuple[int, Resource]] = []
        for entry, task in zip(entries, existing, strict=True):
            result = (
                _from_task(task)
                if task is not None
                else FollowUp(status=500, error=FhirError(f"the follow-up could not be written: {reason}"))
            )
            answered.append((entry.position, _batch_entry(result)))
        self._staged_possible = None
        async with self.db.transaction() as conn:
            if await L.finish(conn, list_id, answered):
                await self._schedule_purge(conn, list_id)

    async def _schedule_purge(self, conn: AsyncConnection, list_id: str) -> None:
        """A finished list's status is kept ``LTFU_LIST_RETENTION_SECONDS``, then deleted: committed
        with the write that finishes it, so no finished list is kept forever."""
        due = datetime.now(UTC) + timedelta(seconds=self.settings.ltfu_list_retention_seconds)
        job = NewJob(kind=LIST_PURGE_JOB, target=f"LTFU list {list_id}", payload={"list_id": list_id})
        await enqueue(conn, [job], now=due)

    async def purge_list(self, list_id: str) -> bool:
        """Delete a finished list's rows (the ``ltfu.list-purge`` job); False if already gone."""
        assert self.db is not None
        async with self.db.transaction() as conn:
            return await L.purge(conn, list_id)

    async def list_status(self, list_id: str) -> L.ListStatus | None:
        """A staged list's progress and answers (None: no such list)."""
        if self.db is None:
            return None
        async with self.db.connect() as conn:
            return await L.status(conn, list_id)

    async def _write(self, fresh: list[_Pending], results: list[FollowUp | None]) -> None:
        """All new follow-ups in one transaction; if the store refuses it, entry by entry.

        Each client ServiceRequest is checked against R4 first, on its own: one bad entry answers
        400 by itself instead of failing the shared transaction (which would then be retried
        entry by entry), and the store need not check it again.
        """
        checked: list[_Pending] = []
        for p in fresh:
            try:
                p.request = self.schema_checked(p.request)
            except FhirError as exc:
                results[p.index] = FollowUp(status=int(exc.status), error=exc)
            else:
                checked.append(p)
        fresh = checked
        if not fresh:
            return
        try:
            await self._write_transaction(fresh, results)
        except FhirError as exc:
            if len(fresh) == 1:
                results[fresh[0].index] = FollowUp(status=int(exc.status), error=exc)
            else:
                for p in fresh:
                    try:
                        await self._write_transaction([p], results)
                    except FhirError as one:
                        results[p.index] = FollowUp(status=int(one.status), error=one)
        for p in fresh:
            first = results[p.index]
            if first is not None and first.error is not None:
                for dup in p.duplicates:
                    results[dup] = FollowUp(status=first.status, error=first.error)

    async def _write_transaction(self, batch: list[_Pending], results: list[FollowUp | None]) -> None:
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
                    target=self._cht_target(),
                    payload={"action": "follow-up", "follow_up": p.follow_up_id, "record": record},
                    ordering_key=job_ordering_key(p.follow_up_id),
                )
            )
        response = await self.fhir.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries},
            jobs=jobs,
            trusted=trusted,
            handover=True,
        )
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
            )
            for dup in p.duplicates:
                earlier = results[dup]
                if earlier is not None:
                    earlier.service_request_id, earlier.task_id, earlier.subscription_id = (
                        sr_id,
                        task_id,
                        sub_id,
                    )

    def _cht_target(self) -> str:
        return (
            f"{self.settings.cht_url.rstrip('/')}/api/v2/records" if self.settings.cht_url else "CHT (unset)"
        )

    # -- Encounter ---------------------------------------------------------------------------------

    async def record_encounter(self, body: Any) -> WriteResult:
        """Store the CHT's follow-up report (once per CHT report id); complete the follow-ups it ends.

        The Encounter is written first (its Subscription match, and so the callback, is queued in
        that write); only then are the Tasks completed and their Subscriptions switched off.
        """
        encounter = V.validate_encounter(body)
        patient = await self._encounter_patient(encounter)
        resource = encounter.resource
        resource["subject"] = {"reference": f"Patient/{patient['id']}"}
        sr_id = encounter.service_request_id
        if sr_id is not None and not await self._exists("ServiceRequest", sr_id):
            sr_id = None  # a report naming a ServiceRequest we never had: keep the data, drop the link
            resource["basedOn"] = [
                b for b in resource.get("basedOn") or [] if R.ref_id(b, "ServiceRequest") is None
            ] or None
            if resource["basedOn"] is None:
                del resource["basedOn"]
        if encounter.report_id is not None:
            result = await self.fhir.create(
                dict(resource), if_none_exist=f"identifier={V.CHT_REPORT_SYSTEM}|{encounter.report_id}"
            )
            if not result.created:
                result = await self.fhir.update({**resource, "id": result.resource["id"]})
        else:
            result = await self.fhir.create(dict(resource))
        await self._complete_follow_ups(result.resource, str(patient["id"]), sr_id)
        return result

    async def _encounter_patient(self, encounter: V.ChtEncounter) -> Resource:
        if encounter.subject_patient_id is not None:
            try:
                return await self.fhir.read("Patient", encounter.subject_patient_id)
            except (ResourceNotFound, ResourceGone):
                raise ResourceNotFound(f"Patient/{encounter.subject_patient_id} is not known") from None
        found = await self.fhir.search_all("Patient", [("identifier", encounter.patient_cht_id)])
        if not found:
            raise ResourceNotFound(
                f"Patient with identifier {encounter.patient_cht_id} is not known: the CHT has not pushed "
                "this patient yet. Retry later."
            )
        return found[0]

    async def _exists(self, rtype: str, rid: str) -> bool:
        try:
            await self.fhir.read(rtype, rid)
        except (ResourceNotFound, ResourceGone):
            return False
        return True

    async def _complete_follow_ups(self, encounter: Resource, patient_id: str, sr_id: str | None) -> None:
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
                done = dict(task)
                done["status"] = "completed"
                done["lastModified"] = now
                done["output"] = [
                    *(task.get("output") or []),
                    {
                        "type": {"text": "encounter"},
                        "valueReference": {"reference": f"Encounter/{encounter['id']}"},
                    },
                ]
                if outcome is not None:
                    done["businessStatus"] = outcome
                    done["output"].append({"type": {"text": "outcome"}, "valueCodeableConcept": outcome})
                entries.append(_put(done))
            try:
                await self.fhir.transaction(
                    {"resourceType": "Bundle", "type": "transaction", "entry": entries},
                    jobs=[subscription_off_job(t) for t in tasks if R.task_subscription_id(t)],
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

    async def _subscription_off_entries(self, tasks: Iterable[Resource]) -> list[Resource]:
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
                entries.append(_put({**sub, "status": "off"}))
        return entries

    # -- lifecycle steps the outbox jobs take --------------------------------------------------------

    async def find_tasks(self, follow_up_ids: list[str]) -> list[Resource | None]:
        """The Tasks of these follow-ups (``find_task`` batches concurrent look-ups into this)."""
        found: dict[str, Resource] = {}
        for chunk in _chunks(sorted(set(follow_up_ids)), self.search_chunk):
            tokens = ",".join(f"{R.FOLLOW_UP_SYSTEM}|{fid}" for fid in chunk)
            for task in await self.fhir.search_all(
                "Task", [("identifier", tokens), ("_count", str(len(chunk) * 2))]
            ):
                fid = R.first_identifier_value(task, R.FOLLOW_UP_SYSTEM)
                if fid is not None:
                    found[fid] = task
        return [found.get(fid) for fid in follow_up_ids]

    async def accept_many(self, accepted: Sequence[tuple[Resource, str, str]]) -> None:
        """The CHT holds the records: each (Task, CHT record id, deadline) in one transaction; a Task
        changed meanwhile makes that transaction fail, then each is accepted on its own."""
        entries = [_put(_accepted(task, record_id, expires)) for task, record_id, expires in accepted]
        try:
            await self.fhir.transaction(
                {"resourceType": "Bundle", "type": "transaction", "entry": entries},
                trusted={e["fullUrl"] for e in entries},  # our own Tasks, one step further
            )
        except VersionConflict:
            for task, record_id, expires in accepted:
                await self.accept(task, record_id, expires)

    async def accept(self, task: Resource, cht_record_id: str, expires: str) -> Resource:
        """The CHT holds the record: Task requested → accepted, with the record id and the deadline."""
        for _attempt in range(5):
            try:
                updated = _accepted(task, cht_record_id, expires)
                return (await self.fhir.update(updated, if_match=_etag(task))).resource
            except VersionConflict:
                task = await self.fhir.read("Task", str(task["id"]))
        raise VersionConflict(f"Task/{task['id']} keeps changing; could not record the CHT record")

    async def end_follow_up(self, task: Resource, *, status: str, reason: str) -> bool:
        """An open follow-up ends without an Encounter (failed, expired): Task status + reason,
        Subscription off, in one transaction. False when the Task was no longer open."""
        for _attempt in range(5):
            if task.get("status") not in R.OPEN_TASK_STATUSES:
                return False
            ended = {**task, "status": status, "statusReason": {"text": reason}, "lastModified": R.now_iso()}
            entries = [_put(ended), *await self._subscription_off_entries([task])]
            try:
                await self.fhir.transaction(
                    {"resourceType": "Bundle", "type": "transaction", "entry": entries}
                )
                return True
            except VersionConflict:
                task = await self.fhir.read("Task", str(task["id"]))
        return False

    # -- cancel ------------------------------------------------------------------------------------

    async def cancel(self, service_request_id: str, reason: str | None = None) -> Resource:
        """Revoke the ServiceRequest, cancel its Task, switch its Subscription off, tell the CHT."""
        try:
            sr = await self.fhir.read("ServiceRequest", service_request_id)
        except (ResourceNotFound, ResourceGone):
            raise ResourceNotFound(f"ServiceRequest/{service_request_id} is not known") from None
        tasks = [
            t
            for t in await self.fhir.search_all(
                "Task", [("based-on", f"ServiceRequest/{service_request_id}")]
            )
            if R.first_identifier_value(t, R.FOLLOW_UP_SYSTEM)
        ]
        if sr.get("status") == "revoked" and all(t.get("status") not in R.OPEN_TASK_STATUSES for t in tasks):
            return sr  # already cancelled: idempotent
        text = reason or "Revoked by the requester"
        now = R.now_iso()
        entries = [_put({**sr, "status": "revoked"})]
        jobs: list[NewJob] = []
        open_tasks = [t for t in tasks if t.get("status") in R.OPEN_TASK_STATUSES]
        for task in open_tasks:
            entries.append(
                _put({**task, "status": "cancelled", "statusReason": {"text": text}, "lastModified": now})
            )
            follow_up_id = R.first_identifier_value(task, R.FOLLOW_UP_SYSTEM) or str(task["id"])
            patient_cht_id = (sr.get("subject") or {}).get("identifier", {}).get("value")
            if patient_cht_id:
                jobs.append(
                    NewJob(
                        kind=CHT_RECORD_JOB,
                        target=self._cht_target(),
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
        await self.fhir.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries}, jobs=jobs
        )
        return await self.fhir.read("ServiceRequest", service_request_id)


def ltfu_service(services: Services) -> LtfuService:
    """The process's one LtfuService: API routes and outbox jobs share its duplicate-check lock."""
    service = services.domain.get("ltfu")
    if not isinstance(service, LtfuService):
        service = LtfuService(services.fhir, services.settings, db=services.db)
        services.domain["ltfu"] = service
    return service


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


async def switch_subscription_off(fhir: FhirClient, subscription_id: str) -> bool:
    """Set ``status`` = ``off``; False when it already was off or is gone."""
    for _attempt in range(5):
        try:
            sub = await fhir.read("Subscription", subscription_id)
        except (ResourceNotFound, ResourceGone):
            return False
        if sub.get("status") == "off":
            return False
        try:
            await fhir.update({**sub, "status": "off"}, if_match=_etag(sub))
            return True
        except VersionConflict:
            continue
    raise VersionConflict(f"Subscription/{subscription_id} keeps changing")


def _put(resource: Resource) -> Resource:
    rtype, rid = resource["resourceType"], resource["id"]
    request: dict[str, Any] = {"method": "PUT", "url": f"{rtype}/{rid}"}
    version = (resource.get("meta") or {}).get("versionId")
    if version:
        request["ifMatch"] = f'W/"{version}"'
    return {"fullUrl": f"{rtype}/{rid}", "resource": resource, "request": request}


def _accepted(task: Resource, cht_record_id: str, expires: str) -> Resource:
    """The Task once the CHT took its record (the record id is kept whatever the status now is)."""
    updated = dict(task)
    identifiers = [i for i in task.get("identifier") or [] if i.get("system") != R.CHT_RECORD_SYSTEM]
    updated["identifier"] = [*identifiers, {"system": R.CHT_RECORD_SYSTEM, "value": cht_record_id}]
    if task.get("status") == "requested":
        updated["status"] = "accepted"
        updated["businessStatus"] = {"text": "CHT task created for the community health worker"}
        updated["restriction"] = {"period": {"end": expires}}
    updated["lastModified"] = R.now_iso()
    return updated


def _etag(resource: Resource) -> str | None:
    version = (resource.get("meta") or {}).get("versionId")
    return f'W/"{version}"' if version else None


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _finished(results: Sequence[FollowUp | None]) -> list[FollowUp]:
    return [r if r is not None else FollowUp(status=500, error=FhirError("not processed")) for r in results]


def _staged_keys(p: _Pending) -> list[str]:
    keys = [L.open_key(str(p.patient["id"]), p.requester.id)]
    keys += [L.identifier_key(V.identifier_token(i)) for i in p.request.resource.get("identifier") or []]
    return keys


def _staged_request(p: _Pending) -> Resource:
    """What a staged entry needs to be written later (the requester is resolved again then)."""
    return {
        "service_request": p.request.resource,
        "patient_ref": p.request.patient_ref,
        "requester_ref": p.request.requester_ref,
        "patient_id": str(p.patient["id"]),
        "patient_cht_id": p.patient_cht_id,
    }


def _unstage_request(stored: Resource) -> tuple[V.FollowUpRequest, str, str]:
    request = V.FollowUpRequest(
        resource=stored["service_request"],
        patient_ref=stored["patient_ref"],
        requester_ref=stored["requester_ref"],
    )
    return request, str(stored["patient_id"]), str(stored["patient_cht_id"])


def _from_task(task: Resource) -> FollowUp:
    """The answer for a follow-up already written (a list-write job run again)."""
    return FollowUp(
        status=201,
        service_request_id=R.task_service_request_id(task),
        task_id=task.get("id"),
        subscription_id=R.task_subscription_id(task),
    )


def _batch_entry(result: FollowUp) -> Resource:
    status = {200: "200 OK", 201: "201 Created"}.get(result.status, str(result.status))
    entry: dict[str, Any] = {"response": {"status": status}}
    if result.error is not None:
        entry["response"]["outcome"] = result.error.to_outcome()
        return entry
    if result.status == 202 and result.follow_up_id:
        # accepted from a staged list: no resources yet, only where the Task will be found
        note = result.note or "accepted: the follow-up is being written; the list's status shows its outcome"
        return {
            "response": {
                "status": "202 Accepted",
                "outcome": operation_outcome(
                    note, severity=IssueSeverity.INFORMATION, code=IssueType.INFORMATIONAL
                ),
            },
            "link": [{"relation": "task", "url": R.follow_up_task_search(result.follow_up_id)}],
        }
    if result.service_request_id:
        entry["response"]["location"] = f"ServiceRequest/{result.service_request_id}"
    links = []
    if result.task_id:
        links.append({"relation": "task", "url": f"Task/{result.task_id}"})
    elif result.follow_up_id:
        links.append({"relation": "task", "url": R.follow_up_task_search(result.follow_up_id)})
    if result.subscription_id:
        links.append({"relation": "subscription", "url": f"Subscription/{result.subscription_id}"})
    if links:
        entry["link"] = links
    if result.note:
        entry["response"]["outcome"] = operation_outcome(
            result.note, severity=IssueSeverity.INFORMATION, code=IssueType.INFORMATIONAL
        )
    return entry


def process_uptime() -> float:
    return time.monotonic() - _PROCESS_STARTED


__all__ = [
    "CHT_RECORD_JOB",
    "EXPIRY_JOB",
    "LIST_PURGE_JOB",
    "LIST_WRITE_JOB",
    "FollowUp",
    "ListAnswer",
    "LtfuService",
]
