"""The CHW's report in: a CHT Encounter stored, and the follow-ups it ends completed, in one write.

Per report, ONE FHIR transaction holds the Encounter (a conditional PUT on the CHT report id: the
same report twice is one Encounter, updated), its open follow-ups' Tasks completed, their
ServiceRequests completed and their Subscriptions switched off. The Subscription notification
(the callback) is queued in that same write, so a requester can never hear of an Encounter whose
follow-up is not yet completed; the embedded store matches a transaction's writes against its
Subscriptions as they were before it, so the switch-off does not swallow that callback
(``WriteSession.finish``), and no later Encounter of the patient calls back. An external FHIR
server notifies on its own, later: there a job switches the Subscription off after a delay.

Reports arriving while a batch is being looked up and written are taken together (group commit
over ``kit.coalescer``): a batch costs one round of batched searches (patients, ServiceRequests,
then Tasks, then the Tasks' ServiceRequests) and one transaction. If that shared transaction is
refused (a Task changed meanwhile, one report's bad data), each report is written on its own,
with fresh look-ups, so one report never fails another.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson

from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir.client import FhirClient, Resource, WriteResult
from cht_interop.fhir.errors import FhirError, IssueType, ResourceNotFound, VersionConflict
from cht_interop.fhir.validation import check_resource
from cht_interop.kit import exchanges
from cht_interop.kit.coalescer import BatchAbandoned, Coalescer
from cht_interop.ltfu import resources as R
from cht_interop.ltfu import validation as V
from cht_interop.ltfu.lookups import Search, id_chunks, search_each
from cht_interop.ltfu.writes import LtfuWrites, put, subscription_off_job

log = logging.getLogger(__name__)

# Under load, how long a batch of reports waits for company (group commit, as single requests).
ENCOUNTER_LINGER_SECONDS = 0.002
# A report whose follow-up's Tasks keep changing under it is tried this often, then answered 409.
ATTEMPTS = 3


@dataclass
class Report:
    """A validated report waiting for its batch; ``trusted``: its Encounter passed the R4 check."""

    encounter: V.ChtEncounter
    trusted: bool


@dataclass
class Recorded:
    """A report's answer: the Encounter written (or the error), and the Tasks it completed."""

    result: WriteResult | None = None
    error: FhirError | None = None
    tasks: list[Resource] = field(default_factory=list)


@dataclass
class _Plan:
    """What one report writes: its Encounter entry first, then the Tasks and ServiceRequests."""

    report: Report
    entries: list[Resource] = field(default_factory=list)
    jobs: list[NewJob] = field(default_factory=list)
    tasks: list[Resource] = field(default_factory=list)


@dataclass
class _Found:
    """One look-up round's results, shared by the reports of a batch."""

    patients_by_id: dict[str, Resource] = field(default_factory=dict)
    patients_by_value: dict[str, Resource] = field(default_factory=dict)
    service_requests: dict[str, Resource] = field(default_factory=dict)
    tasks_by_request: dict[str, list[Resource]] = field(default_factory=dict)
    tasks_by_patient: dict[str, list[Resource]] = field(default_factory=dict)
    subscriptions: dict[str, Resource] = field(default_factory=dict)  # the open Tasks' (embedded store)


class EncounterReports:
    """``record``: one CHT report in, its Encounter out; concurrent reports share a batch."""

    def __init__(self, writes: LtfuWrites) -> None:
        self.fhir: FhirClient = writes.fhir
        self.writes = writes
        self._lock = asyncio.Lock()  # one batch at a time, grouped or handed in together
        self._grouped = Coalescer(self._record_batch, lock=self._lock, linger=ENCOUNTER_LINGER_SECONDS)

    async def record(self, body: Any) -> WriteResult:
        """Store the CHT's follow-up report (once per CHT report id); complete the follow-ups it ends."""
        try:
            recorded = await self._grouped(self._checked(body))
        except BatchAbandoned:
            busy = FhirError("the batch carrying this report was interrupted; retry (resends are idempotent)")
            busy.status = HTTPStatus.SERVICE_UNAVAILABLE
            busy.issue_type = IssueType.TRANSIENT
            raise busy from None
        if recorded.error is not None:
            raise recorded.error
        assert recorded.result is not None
        # logged here, not in the batch: the line carries this request's transaction id
        encounter = recorded.result.resource
        log.info(
            "Encounter %s stored for Patient %s (ServiceRequest %s)",
            encounter["id"],
            R.ref_id(encounter.get("subject"), "Patient"),
            R.ref_id(next(iter(encounter.get("basedOn") or []), None), "ServiceRequest"),
        )
        if recorded.tasks:
            exchanges.note("followUpId", R.first_identifier_value(recorded.tasks[0], R.FOLLOW_UP_SYSTEM))
            log.info(
                "follow-up Task(s) %s completed by Encounter %s",
                ", ".join(str(t["id"]) for t in recorded.tasks),
                encounter["id"],
            )
        return recorded.result

    async def record_together(self, bodies: Sequence[Any]) -> list[WriteResult | FhirError]:
        """Several reports as one batch, what concurrent ``record`` calls become under load; each
        answered on its own (its Encounter, or its error)."""
        checked: list[Report | FhirError] = []
        for body in bodies:
            try:
                checked.append(self._checked(body))
            except FhirError as exc:
                checked.append(exc)
        async with self._lock:
            recorded = iter(await self._record_batch([c for c in checked if isinstance(c, Report)]))
        answers: list[WriteResult | FhirError] = []
        for c in checked:
            if isinstance(c, FhirError):
                answers.append(c)
                continue
            done = next(recorded)
            answers.append(done.error or done.result or FhirError("the report was not answered"))
        return answers

    def _checked(self, body: Any) -> Report:
        encounter = V.validate_encounter(body)
        trusted = self.fhir.capabilities.trusted_writes
        if trusted:
            # checked before the batch, on its own: a bad element answers 400 by itself
            check_resource(encounter.resource, "Encounter")
        return Report(encounter, trusted)

    # -- a batch ---------------------------------------------------------------------------------

    async def _record_batch(self, reports: list[Report]) -> list[Recorded]:
        """Every report of the batch; a report id seen twice waits for the next round (the first
        one's Encounter must exist before the second can update it)."""
        results = [Recorded() for _ in reports]
        pending = list(range(len(reports)))
        while pending:
            now, later, seen = [], [], set()
            for i in pending:
                report_id = reports[i].encounter.report_id
                if report_id is not None and report_id in seen:
                    later.append(i)
                    continue
                if report_id is not None:
                    seen.add(report_id)
                now.append(i)
            outcomes = await self._record_round([reports[i] for i in now])
            for i, outcome in zip(now, outcomes, strict=True):
                results[i] = outcome
            pending = later
        return results

    async def _record_round(self, reports: list[Report]) -> list[Recorded]:
        plans = await self._plan(reports)
        ready = [p for p in plans if isinstance(p, _Plan)]
        results = [Recorded(error=p) if isinstance(p, FhirError) else Recorded() for p in plans]
        if not ready:
            return results
        try:
            written = await self._commit(ready)
        except FhirError as exc:
            if len(ready) == 1 and not isinstance(exc, VersionConflict):
                written = [Recorded(error=exc)]
            else:
                # a Task changed meanwhile, or one report the store refused: each on its own
                written = [await self._record_alone(p.report) for p in ready]
        answers = iter(written)
        return [next(answers) if isinstance(p, _Plan) else r for p, r in zip(plans, results, strict=True)]

    async def _record_alone(self, report: Report) -> Recorded:
        """One report in its own transaction, looked up afresh on every attempt (Tasks changed)."""
        for _attempt in range(ATTEMPTS):
            (plan,) = await self._plan([report])
            if isinstance(plan, FhirError):
                return Recorded(error=plan)
            try:
                (recorded,) = await self._commit([plan])
                return recorded
            except VersionConflict:
                continue
            except FhirError as exc:
                return Recorded(error=exc)
        return Recorded(
            error=VersionConflict(
                "the follow-up Tasks keep changing; nothing was stored, send the report again"
            )
        )

    async def _commit(self, plans: list[_Plan]) -> list[Recorded]:
        """The batch's one transaction; each report's Encounter as written."""
        entries = [e for p in plans for e in p.entries]
        trusted = {e["fullUrl"] for p in plans for e in p.entries[1:]}  # our Tasks and ServiceRequests
        trusted |= {p.entries[0]["fullUrl"] for p in plans if p.report.trusted}
        response = await self.writes.fhir_transaction(
            entries, jobs=[j for p in plans for j in p.jobs], trusted=trusted, handover=True
        )
        answered = response.get("entry") or []
        if len(answered) != len(entries):
            raise FhirError("the FHIR server answered the transaction with a different number of entries")
        out: list[Recorded] = []
        at = 0
        for plan in plans:
            result = _written(plan.entries[0]["resource"], answered[at])
            at += len(plan.entries)
            out.append(Recorded(result=result, tasks=plan.tasks))
        return out

    # -- the look-ups and what to write ------------------------------------------------------------

    async def _plan(self, reports: list[Report]) -> list[_Plan | FhirError]:
        found = await self._look_up(reports)
        now = R.now_iso()
        claimed: set[str] = set()  # a Task or ServiceRequest two reports would end: the first ends it
        plans: list[_Plan | FhirError] = []
        for report in reports:
            enc = report.encounter
            patient = _patient_of(enc, found)
            if isinstance(patient, FhirError):
                plans.append(patient)
                continue
            # the store writes into what it is handed: a copy keeps the report intact for a retry
            resource = orjson.loads(orjson.dumps(enc.resource))
            resource["subject"] = {"reference": f"Patient/{patient['id']}"}
            sr_id = enc.service_request_id
            if sr_id is not None and sr_id not in found.service_requests:
                sr_id = None  # a report naming a ServiceRequest we never had: keep the data, drop the link
                based_on = [b for b in resource.get("basedOn") or [] if R.ref_id(b, "ServiceRequest") is None]
                if based_on:
                    resource["basedOn"] = based_on
                else:
                    resource.pop("basedOn", None)
            plan = _Plan(report, [_encounter_entry(resource, enc.report_id)])
            if sr_id is not None:
                tasks = found.tasks_by_request.get(sr_id, [])
            else:
                tasks = found.tasks_by_patient.get(str(patient["id"]), [])
            plan.tasks = [t for t in tasks if f"Task/{t['id']}" not in claimed]
            outcome = R.encounter_outcome(resource)
            encounter_ref = plan.entries[0]["fullUrl"]
            for task in plan.tasks:
                claimed.add(f"Task/{task['id']}")
                plan.entries.append(put(R.completed_task(task, encounter_ref, outcome, now)))
                plan.entries += self._switch_off(task, found, claimed, plan)
                task_sr = R.task_service_request_id(task)
                sr = found.service_requests.get(task_sr) if task_sr else None
                if sr is not None and f"ServiceRequest/{task_sr}" not in claimed:
                    claimed.add(f"ServiceRequest/{task_sr}")
                    ended = R.ended_service_request(sr, "completed", None, now)
                    if ended is not None:
                        plan.entries.append(put(ended))
            plans.append(plan)
        return plans

    def _switch_off(self, task: Resource, found: _Found, claimed: set[str], plan: _Plan) -> list[Resource]:
        """The completed follow-up's Subscription off: in this very transaction on the embedded
        store (its entry returned), else a job that waits for the external server's notification."""
        sub_id = R.task_subscription_id(task)
        if not sub_id:
            return []
        if not self.fhir.capabilities.notifies_in_write:
            plan.jobs.append(subscription_off_job(task))
            return []
        sub = found.subscriptions.get(sub_id)
        if sub is None or sub.get("status") == "off" or f"Subscription/{sub_id}" in claimed:
            return []
        claimed.add(f"Subscription/{sub_id}")
        return [put({**sub, "status": "off"})]

    async def _look_up(self, reports: list[Report]) -> _Found:
        """Patients and named ServiceRequests; then the open follow-up Tasks; then the Tasks'
        other ServiceRequests and (embedded store) their Subscriptions: three rounds of batched
        searches for the whole batch."""
        found = _Found()
        encs = [r.encounter for r in reports]
        # an id no FHIR id can be is not searched for (its search would fail the whole batch): not known
        ids = sorted({i for e in encs if (i := e.subject_patient_id) is not None and V.FHIR_ID.match(i)})
        values = sorted({e.patient_cht_id for e in encs if e.subject_patient_id is None})
        named = sorted({i for e in encs if (i := e.service_request_id) is not None and V.FHIR_ID.match(i)})
        by_id, by_value, requests = await asyncio.gather(
            self._search("Patient", "_id", ids),
            self._search("Patient", "identifier", values),
            self._search("ServiceRequest", "_id", named),
        )
        found.patients_by_id = {str(p["id"]): p for p in by_id}
        for patient in by_value:
            for ident in patient.get("identifier") or []:
                value = ident.get("value") if isinstance(ident, dict) else None
                if isinstance(value, str):
                    found.patients_by_value.setdefault(value, patient)
        found.service_requests = {str(sr["id"]): sr for sr in requests}

        linked = {e.service_request_id for e in encs if e.service_request_id in found.service_requests}
        unlinked: set[str] = set()
        for enc in encs:
            if enc.service_request_id not in found.service_requests:
                of = _patient_of(enc, found)
                if not isinstance(of, FhirError):
                    unlinked.add(f"Patient/{of['id']}")
        status = [("status", R.OPEN_TASK_STATUS_PARAM)]
        by_request, by_patient = await asyncio.gather(
            self._search("Task", "based-on", sorted(f"ServiceRequest/{s}" for s in linked if s), status),
            self._search("Task", "patient", sorted(unlinked), status),
        )
        for task in {str(t["id"]): t for t in [*by_request, *by_patient]}.values():
            if not R.first_identifier_value(task, R.FOLLOW_UP_SYSTEM):
                continue  # not one of our follow-ups
            sr_id = R.task_service_request_id(task)
            if sr_id is not None:
                found.tasks_by_request.setdefault(sr_id, []).append(task)
            patient_id = R.ref_id(task.get("for"), "Patient")
            if patient_id is not None:
                found.tasks_by_patient.setdefault(patient_id, []).append(task)

        others = sorted({s for s in found.tasks_by_request if s not in found.service_requests})
        subscriptions: set[str] = set()
        if self.fhir.capabilities.notifies_in_write:
            for tasks in found.tasks_by_patient.values():
                subscriptions.update(s for t in tasks if (s := R.task_subscription_id(t)))
            for tasks in found.tasks_by_request.values():
                subscriptions.update(s for t in tasks if (s := R.task_subscription_id(t)))
        more, subs = await asyncio.gather(
            self._search("ServiceRequest", "_id", others),
            self._search("Subscription", "_id", sorted(subscriptions)),
        )
        for sr in more:
            found.service_requests[str(sr["id"])] = sr
        found.subscriptions = {str(sub["id"]): sub for sub in subs}
        return found

    async def _search(
        self, rtype: str, name: str, values: Sequence[str], extra: Search | None = None
    ) -> list[Resource]:
        """Every ``rtype`` matching any of ``values`` (batched searches; none for no values)."""
        searches = [[(name, ",".join(chunk)), *(extra or [])] for chunk in id_chunks(self.fhir, values)]
        return [r for rs in await search_each(self.fhir, rtype, searches) for r in rs]


def _patient_of(enc: V.ChtEncounter, found: _Found) -> Resource | FhirError:
    """The patient a report is about (404 while the CHT has not pushed it)."""
    if enc.subject_patient_id is not None:
        patient = found.patients_by_id.get(enc.subject_patient_id)
        if patient is None:
            return ResourceNotFound(f"Patient/{enc.subject_patient_id} is not known")
        return patient
    patient = found.patients_by_value.get(enc.patient_cht_id)
    if patient is None:
        return ResourceNotFound(
            f"Patient with identifier {enc.patient_cht_id} is not known: the CHT has not pushed "
            "this patient yet. Retry later."
        )
    return patient


def _encounter_entry(resource: Resource, report_id: str | None) -> Resource:
    """The Encounter's entry: with a CHT report id a conditional PUT on it (created the first
    time, updated on a resend), else a plain create. Its fullUrl is what the Tasks point to."""
    full_url = f"urn:uuid:{uuid.uuid4()}"
    if report_id is None:
        return {"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": "Encounter"}}
    url = f"Encounter?identifier={V.CHT_REPORT_SYSTEM}|{report_id}"
    return {"fullUrl": full_url, "resource": resource, "request": {"method": "PUT", "url": url}}


def _written(resource: Resource, answer: Resource) -> WriteResult:
    """The Encounter as the transaction wrote it (the store's representation when it sent one)."""
    response = answer.get("response") or {}
    created = str(response.get("status", "")).startswith("201")
    stored = answer.get("resource")
    if isinstance(stored, dict):
        return WriteResult(stored, created)
    meta = dict(resource.get("meta") or {})
    version = str(response.get("etag") or "").removeprefix("W/").strip('"')
    if version:
        meta["versionId"] = version
    if response.get("lastModified"):
        meta["lastUpdated"] = response["lastModified"]
    written = {**resource, "id": R.location_id(response.get("location"), "Encounter")}
    if meta:
        written["meta"] = meta
    return WriteResult(written, created)
