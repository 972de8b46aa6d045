"""The values passed between the LTFU steps, and how an answer reads in a batch-response.

A follow-up request travels intake → duplicate check → write (now, or later from a staged list):
``Requester`` and ``Pending`` are what it carries on the way, ``FollowUp`` its answer, ``ListAnswer``
a whole list's. They live apart from the steps so that each step can import them without importing
another step. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cht_interop.fhir.client import Resource
from cht_interop.fhir.errors import FhirError, IssueSeverity, IssueType, operation_outcome
from cht_interop.ltfu import resources as R
from cht_interop.ltfu import validation as V


@dataclass(slots=True)
class Requester:
    """A resolved requesting Organization and the callback address of its Endpoint."""

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
class Pending:
    """A valid entry whose requester and patient are known: a follow-up to start unless a duplicate."""

    index: int
    request: V.FollowUpRequest
    patient: Resource
    patient_cht_id: str
    requester: Requester
    follow_up_id: str = field(default_factory=R.new_follow_up_id)
    duplicates: list[int] = field(default_factory=list)  # later entries of the list for the same follow-up


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


def failed(error: FhirError) -> FollowUp:
    """The answer of an entry that failed with ``error``."""
    return FollowUp(status=int(error.status), error=error)


def finished(results: Sequence[FollowUp | None]) -> list[FollowUp]:
    """Every entry answered: one left unanswered by a step is a 500, never a silent gap."""
    return [r if r is not None else FollowUp(status=500, error=FhirError("not processed")) for r in results]


def from_task(task: Resource) -> FollowUp:
    """The answer for a follow-up already written (a list-write job run again)."""
    return FollowUp(
        status=201,
        service_request_id=R.task_service_request_id(task),
        task_id=task.get("id"),
        subscription_id=R.task_subscription_id(task),
    )


def batch_entry(result: FollowUp) -> Resource:
    """The batch-response entry of one answer (what a list's client, or its status, shows)."""
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
