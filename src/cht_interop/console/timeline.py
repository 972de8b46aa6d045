"""A follow-up's life as one list of events, oldest first: what its FHIR resources say and what
each outbox job did, attempt by attempt (a run of identical failures shown as one line)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cht_interop.console.followups import FollowUp
from cht_interop.delivery.outbox import Attempt, JobRecord
from cht_interop.ltfu import resources as R

JOB_LABELS = {
    "cht.record": "Follow-up record sent to the CHT",
    "fhir.subscription-notification": "Callback to the requester",
    "ltfu.subscription-off": "Subscription switched off",
    "ltfu.follow-up-expiry": "Expiry check",
    "ltfu.list-write": "LTFU list entries written",
    "ltfu.list-purge": "LTFU list status deleted",
}


def job_label(job: JobRecord) -> str:
    if job.kind == "cht.record" and job.payload.get("action") == "cancel":
        return "Cancellation sent to the CHT"
    return JOB_LABELS.get(job.kind, job.kind)


def nothing_sent(note: str | None) -> bool:
    """A job that succeeded without sending (its handler found nothing left to do) says so in its
    note: ``not delivered: …`` (notifications), ``not sent: …`` (CHT records)."""
    return bool(note) and str(note).startswith(("not delivered", "not sent"))


@dataclass(frozen=True)
class Event:
    at: datetime | str | None
    what: str
    detail: str = ""
    ok: bool | None = True  # None: neither done nor failed (waiting, or ended with nothing sent)
    job: int | None = None
    until: datetime | None = None  # the last of a run of identical attempts


def _said(a: Attempt) -> str:
    """What an attempt says, without repeating itself (an error is often just ``HTTP 500``)."""
    http = f"HTTP {a.http_status}" if a.http_status is not None else ""
    text = a.error or a.note or ""
    if a.outcome == "success" and nothing_sent(a.note):
        return f"ran, nothing sent: {text}"
    parts = [a.outcome or "running", "" if text == http else http, text]
    return " · ".join(p for p in parts if p)


def _attempt_events(job: JobRecord) -> list[Event]:
    events: list[Event] = []
    label = job_label(job)
    run: list[Attempt] = []

    def flush() -> None:
        if not run:
            return
        first = run[0]
        ok: bool | None = first.outcome == "success"
        if ok and nothing_sent(first.note):
            ok = None
        what = label if len(run) == 1 else f"{label}: {len(run)} attempts"
        until = run[-1].started_at if len(run) > 1 else None
        events.append(Event(first.started_at, what, _said(first), ok, job.id, until))
        run.clear()

    for a in job.attempt_log:
        if run and (a.outcome, a.http_status, a.error) != (run[0].outcome, run[0].http_status, run[0].error):
            flush()
        run.append(a)
    flush()
    if job.status in ("pending", "running"):
        waiting = f"{job.status}, next try {job.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC"
        events.append(
            Event(job.updated_at, label, waiting if job.status == "pending" else "running", None, job.id)
        )
    elif job.status == "dead" and (not job.attempt_log or job.attempt_log[-1].outcome != "dead"):
        events.append(Event(job.updated_at, f"{label}: given up", job.last_error or "", False, job.id))
    elif job.status == "discarded":  # a person gave up on it: the reason is its last error
        events.append(Event(job.updated_at, f"{label}: discarded", job.last_error or "", False, job.id))
    return events


def timeline(found: FollowUp, jobs: list[JobRecord]) -> list[Event]:
    task, sr = found.task, found.service_request
    events = [
        Event(task.get("authoredOn"), "Follow-up requested", R.service_request_reason(sr) if sr else "")
    ]
    for job in jobs:
        events += _attempt_events(job)
    if found.encounter is not None:
        outcome = R.encounter_outcome(found.encounter) or {}
        at = (found.encounter.get("meta") or {}).get("lastUpdated")
        what = f"Encounter/{found.encounter['id']} stored (the CHW's answer)"
        events.append(Event(at, what, str(outcome.get("text") or "")))
    if task.get("status") not in R.OPEN_TASK_STATUSES:
        reason = str((task.get("statusReason") or {}).get("text") or "")
        events.append(
            Event(
                task.get("lastModified"),
                f"Follow-up {task.get('status')}",
                reason,
                task.get("status") == "completed",
            )
        )
    return sorted(events, key=_when)


def _when(event: Event) -> str:
    at = event.at
    if isinstance(at, datetime):
        return at.isoformat()
    try:
        return datetime.fromisoformat(str(at).replace("Z", "+00:00")).isoformat()
    except ValueError:
        return str(at)
