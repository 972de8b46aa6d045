"""Patients: the CHT's pushes, and finding the patient a request or a report is about.

The CHT pushes each patient (one Patient per CHT id, updated on every re-push); follow-up requests
name ``Patient/<CHT id>`` and the CHT's reports carry the CHT id. Looking patients up is the
largest read of a long list, so ``resolve`` fetches them in batched searches that bring the
patients' Tasks along (for the duplicate check), and keeps of each Patient only what a follow-up's
start reads of it (``brief``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cht_interop.fhir.client import FhirClient, Resource, WriteResult
from cht_interop.kit.fair import paced
from cht_interop.ltfu import resources as R
from cht_interop.ltfu import validation as V
from cht_interop.ltfu.lookups import id_chunks, search_each, search_each_kept
from cht_interop.ltfu.writes import upsert_by_identifier


class Patients:
    """Patient upsert (the CHT's push) and look-up (by request reference, by report)."""

    def __init__(self, fhir: FhirClient) -> None:
        self.fhir = fhir

    async def upsert(self, body: Any) -> WriteResult:
        """The CHT's outbound push: one Patient per CHT id, updated on every re-push."""
        patient, cht_id = V.validate_patient(body)
        return await upsert_by_identifier(self.fhir, patient, {"system": V.CHT_SYSTEM, "value": cht_id})

    async def resolve(
        self, refs: set[str], with_tasks: bool = True
    ) -> tuple[dict[str, Resource], dict[str, list[Resource]]]:
        """``Patient/<x>`` as the reference reads it: identifier value x (any system); else id x.

        ``with_tasks``: the patients' Tasks come in the same search (``_revinclude``), for the
        duplicate check: (ref → Patient, Patient id → its Tasks; empty without them). Each Patient
        is ``brief``: its id and identifiers, all the duplicate check and the write read of it.
        """
        out: dict[str, Resource] = {}
        tasks: dict[str, list[Resource]] = {}

        def take(found: list[Resource], key_of: Callable[[Resource], Iterable[Any]]) -> None:
            for resource in found:
                if resource.get("resourceType") == "Task":
                    file_task(tasks, resource)
                    continue
                for key in key_of(resource):
                    if key in refs and key not in out:
                        out[key] = resource

        def identifier_values(patient: Resource) -> list[Any]:
            return [i.get("value") for i in patient.get("identifier") or [] if isinstance(i, dict)]

        revinclude = [("_revinclude", "Task:patient")] if with_tasks else []
        by_identifier = [
            [("identifier", ",".join(chunk)), *revinclude, ("_count", str(len(chunk) * 2))]
            for chunk in id_chunks(self.fhir, sorted(refs))
        ]
        async for found in paced(await search_each_kept(self.fhir, "Patient", by_identifier, briefs)):
            take(found, identifier_values)  # one search's (see kit/fair.py)
        missing = [r for r in refs if r not in out and V.FHIR_ID.match(r)]
        by_id = [
            [("_id", ",".join(chunk)), *revinclude, ("_count", str(len(chunk)))]
            for chunk in id_chunks(self.fhir, sorted(missing))
        ]
        async for found in paced(await search_each_kept(self.fhir, "Patient", by_id, briefs)):
            take(found, lambda p: [p["id"]])
        return out, tasks

    async def tasks_of(self, patient_ids: set[str]) -> dict[str, list[Resource]]:
        """Patient id → its Tasks (what ``resolve`` brings along), read on their own."""
        tasks: dict[str, list[Resource]] = {}
        searches = [
            [("patient", ",".join(f"Patient/{i}" for i in chunk))]
            for chunk in id_chunks(self.fhir, sorted(patient_ids))
        ]
        for found in await search_each(self.fhir, "Task", searches):
            for task in found:
                file_task(tasks, task)
        return tasks


def brief(resource: Resource) -> Resource:
    """A Patient as a follow-up's start reads it (its id, its identifiers: the CHT id, and what a
    request's reference may name); any other resource whole. A long list's check and staging held
    10,000 whole Patients (names, addresses, telecoms, meta: ~28 MiB resident) until it committed."""
    if resource.get("resourceType") != "Patient":
        return resource
    return {
        "resourceType": "Patient",
        "id": resource.get("id"),
        "identifier": resource.get("identifier") or [],
    }


def briefs(found: list[Resource]) -> list[Resource]:
    """Each of one search's matches, ``brief`` (its Tasks whole)."""
    return [brief(resource) for resource in found]


def file_task(tasks: dict[str, list[Resource]], task: Resource) -> None:
    """Add ``task`` to its patient's list in ``tasks`` (patient id → Tasks)."""
    pid = R.ref_id(task.get("for"), "Patient")
    if pid is not None:
        tasks.setdefault(pid, []).append(task)
