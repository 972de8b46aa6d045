"""What the interop server answers, as typed values (no I/O here).

The server speaks FHIR: an error is an OperationOutcome, a list's answer a ``batch-response``
Bundle, a follow-up's state its Task. These classes read those shapes once, so the facility's
code handles attributes, not JSON paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Resource = dict[str, Any]

FOLLOW_UP_SYSTEM = "urn:cht-interop:follow-up"
OPEN_TASK_STATUSES = ("requested", "accepted", "in-progress")


def outcome_text(outcome: Any) -> str:
    """The ``diagnostics`` (else ``details.text``) of every issue of an OperationOutcome."""
    if not isinstance(outcome, dict):
        return ""
    texts = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
        if isinstance(text, str) and text:
            texts.append(text)
    return "; ".join(texts)


class InteropError(Exception):
    """The server refused a request: HTTP status and its OperationOutcome (text in ``message``)."""

    def __init__(self, status: int, message: str, outcome: Resource | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.outcome = outcome


def last_id(reference: str | None, resource_type: str) -> str | None:
    """``[base/]Type/id[/_history/n]`` → id (None when ``reference`` names no ``resource_type``)."""
    if not reference:
        return None
    parts = reference.split("?")[0].split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


@dataclass(frozen=True, slots=True)
class Registration:
    """A requesting system as the server knows it: its Endpoint (callback) and Organization."""

    endpoint_id: str
    organization_id: str
    organization_identifier: str
    callback_url: str


@dataclass(frozen=True, slots=True)
class Submission:
    """One follow-up request's answer: started (201), existing (200), being written (202), or an
    error (4xx, with the server's text in ``error``)."""

    status: int
    service_request_id: str | None = None
    task: str | None = None  # under /fhir: ``Task/<id>`` or ``Task?identifier=…`` (being written)
    subscription_id: str | None = None
    error: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def submission_of_entry(entry: Resource) -> Submission:
    """A ``batch-response`` entry → Submission."""
    response = entry.get("response") or {}
    status = int(str(response.get("status") or "0").split()[0] or 0)
    links = {
        link.get("relation"): link.get("url")
        for link in entry.get("link") or []
        if isinstance(link, dict) and isinstance(link.get("url"), str)
    }
    text = outcome_text(response.get("outcome")) or None
    return Submission(
        status=status,
        service_request_id=last_id(response.get("location"), "ServiceRequest"),
        task=links.get("task"),
        subscription_id=last_id(links.get("subscription"), "Subscription"),
        error=text if status >= 300 else None,
        note=text if status < 300 else None,
    )


@dataclass(slots=True)
class ListResult:
    """An LTFU list's answer, one Submission per entry in the order sent; ``list_id`` is set when
    the server wrote it in the background (FHIR's asynchronous pattern)."""

    submissions: list[Submission]
    list_id: str | None = None
    status_url: str | None = None
    polls: int = 0

    @property
    def failed(self) -> list[tuple[int, Submission]]:
        return [(n, s) for n, s in enumerate(self.submissions) if not s.ok]


@dataclass(frozen=True, slots=True)
class FollowUpStatus:
    """A follow-up's state, read from its Task (the server's record of it).

    ``status``: requested (sent to the CHT) → accepted (the CHW has the task) → completed (the
    CHW's answer is in, ``outcome`` says what it was), or cancelled / failed (``reason``).
    """

    task_id: str
    status: str
    service_request_id: str | None
    follow_up_id: str | None
    business_status: str | None
    outcome_code: str | None
    reason: str | None
    encounter_id: str | None
    last_modified: str | None
    task: Resource = field(repr=False, compare=False)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_TASK_STATUSES

    @classmethod
    def of_task(cls, task: Resource) -> FollowUpStatus:
        business = task.get("businessStatus") or {}
        code = next(
            (c.get("code") for c in business.get("coding") or [] if isinstance(c, dict) and c.get("code")),
            None,
        )
        encounter = next(
            (
                last_id((o.get("valueReference") or {}).get("reference"), "Encounter")
                for o in task.get("output") or []
                if isinstance(o, dict) and (o.get("type") or {}).get("text") == "encounter"
            ),
            None,
        )
        follow_up = next(
            (
                i.get("value")
                for i in task.get("identifier") or []
                if isinstance(i, dict) and i.get("system") == FOLLOW_UP_SYSTEM
            ),
            None,
        )
        based_on = next(
            (
                sr
                for ref in task.get("basedOn") or []
                if (sr := last_id((ref or {}).get("reference"), "ServiceRequest"))
            ),
            None,
        )
        return cls(
            task_id=str(task.get("id")),
            status=str(task.get("status")),
            service_request_id=based_on,
            follow_up_id=follow_up,
            business_status=business.get("text") if isinstance(business.get("text"), str) else None,
            outcome_code=code,
            reason=(task.get("statusReason") or {}).get("text"),
            encounter_id=encounter,
            last_modified=task.get("lastModified"),
            task=task,
        )
