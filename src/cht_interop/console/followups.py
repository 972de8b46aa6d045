"""Follow-ups as the console shows them, read through the FhirClient (embedded store or HAPI alike).

A follow-up is a Task carrying our follow-up identifier (``ltfu/resources.py``). The list is
sorted by last change, newest first, and paged by key: a page's cursor is the last row's
``meta.lastUpdated`` and how many rows of that same instant were already shown, so a page costs
the same however deep it is (no offset) and a follow-up written meanwhile does not shift pages.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cht_interop.fhir.client import FhirClient, Resource
from cht_interop.fhir.errors import FhirError, InvalidRequest, ResourceGone, ResourceNotFound
from cht_interop.ltfu import resources as R

TASK_STATUSES = ("requested", "accepted", "in-progress", "completed", "cancelled", "failed", "rejected")
MAX_COUNT = 1000  # the most one search page may hold (HAPI's and the embedded store's cap)


@dataclass(frozen=True)
class Filters:
    """The list's filters as the form sends them (empty: not filtered)."""

    status: str = ""
    outcome: str = ""
    requester: str = ""  # Organization id
    patient: str = ""  # Patient id or the patient's CHT id
    since: str = ""  # YYYY-MM-DD, authored on or after
    until: str = ""  # YYYY-MM-DD, authored on or before

    def problems(self) -> list[str]:
        found = []
        if self.status and self.status not in TASK_STATUSES:
            found.append(f"unknown status {self.status!r}")
        if self.outcome and self.outcome not in R.OUTCOME_LABELS:
            found.append(f"unknown outcome {self.outcome!r}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value:
                try:
                    datetime.strptime(value, "%Y-%m-%d")
                except ValueError:
                    found.append(f"{name} must be a date (YYYY-MM-DD), not {value!r}")
        for name in ("requester", "patient"):
            if any(c in getattr(self, name) for c in "|,$/?&"):
                found.append(f"{name} must be a plain id")
        return found


@dataclass(frozen=True)
class Row:
    task_id: str
    follow_up_id: str
    status: str
    outcome: str | None
    patient: str | None
    patient_name: str | None
    requester: str | None
    authored: str | None
    last_updated: str


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    next_cursor: str | None


async def _params(fhir: FhirClient, f: Filters) -> list[tuple[str, str]]:
    """The FHIR search parameters of the filters."""
    params: list[tuple[str, str]] = []
    if f.status:
        params.append(("status", f.status))
    if f.outcome:
        params.append(("business-status", f.outcome))
    if f.requester:
        params.append(("requester", f"Organization/{f.requester}"))
    if f.patient:
        found = await fhir.search("Patient", [("identifier", f.patient), ("_elements", "id")])
        ids = [str(e["resource"]["id"]) for e in found.get("entry") or []]
        ids = ids or [f.patient]  # not a CHT id: taken as the Patient's own id
        params.append(("patient", ",".join(f"Patient/{i}" for i in ids)))
    if f.since:
        params.append(("authored-on", f"ge{f.since}"))
    if f.until:
        params.append(("authored-on", f"le{f.until}"))
    return params


def _cursor(last_updated: str, repeats: int) -> str:
    return f"{last_updated}~{repeats}"


def _parse_cursor(cursor: str) -> tuple[str, int] | None:
    instant, sep, repeats = cursor.rpartition("~")
    if not sep or not repeats.isdigit() or not instant:
        return None
    try:
        datetime.fromisoformat(instant)
    except ValueError:
        return None
    return instant, int(repeats)


def valid_cursor(cursor: str) -> bool:
    return _parse_cursor(cursor) is not None


# How far back each search of an unfiltered later page looks before it looks further (None: all the
# way). The store sorts what a search matches before it takes a page, so a search bounded to a
# window before the cursor costs what that window holds, not every older follow-up; it widens until
# the page is full (bench/console.py: page 20 of 100,000 in ~65 ms instead of ~750 ms on SQLite).
WINDOWS: tuple[timedelta | None, ...] = (
    timedelta(seconds=1),
    timedelta(seconds=30),
    timedelta(minutes=15),
    timedelta(hours=6),
    timedelta(days=7),
    timedelta(days=180),
    None,
)


async def page(fhir: FhirClient, f: Filters, *, cursor: str | None, size: int) -> Page:
    """One page of follow-ups, last changed first."""
    params = await _params(fhir, f)
    skip, after = 0, None
    if cursor:
        parsed = _parse_cursor(cursor)
        if parsed is not None:
            after, skip = parsed
    if skip + size + 1 > MAX_COUNT:
        raise InvalidRequest(
            f"more than {MAX_COUNT - size} follow-ups changed in the same millisecond: narrow the filters"
        )
    upper = datetime.fromisoformat(after) if after else datetime.now(UTC)
    # Unfiltered, the store reads Tasks in (type, last change) order: the first page needs no
    # window, and a later one a window to stay flat. Filtered, it starts from the filter's index
    # and sorts what that matches: one search (a window would only repeat that work).
    windows = WINDOWS if not params and after is not None else (None,)
    params += [("_sort", "-_lastUpdated"), ("_count", str(size + skip + 1)), ("_total", "none")]
    if after is not None:
        params.append(("_lastUpdated", f"le{after}"))
    tasks: list[Resource] = []
    for window in windows:
        bounded = [*params, ("_lastUpdated", f"ge{_instant(upper - window)}")] if window else params
        bundle = await fhir.search("Task", bounded)
        tasks = [
            e["resource"] for e in bundle.get("entry") or [] if e["resource"].get("resourceType") == "Task"
        ]
        if len(tasks) > size + skip:
            break
    if after is not None:  # the rows of the cursor's instant already shown come first: drop them
        shown = 0
        while tasks and shown < skip and _updated(tasks[0]) == after:
            tasks.pop(0)
            shown += 1
    more = len(tasks) > size
    tasks = tasks[:size]
    next_cursor = None
    if more and tasks:
        last = _updated(tasks[-1])
        repeats = sum(1 for t in tasks if _updated(t) == last)
        if after == last:
            repeats += skip
        next_cursor = _cursor(last, repeats)
    # a Task that is not one of our follow-ups (a client may write Tasks to /fhir) is not shown; it
    # is left out here rather than by an identifier search, which would cost a scan of every Task
    ours = [t for t in tasks if R.first_identifier_value(t, R.FOLLOW_UP_SYSTEM)]
    names = await _patient_names(fhir, ours)
    return Page([_row(t, names) for t in ours], next_cursor)


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _patient_names(fhir: FhirClient, tasks: list[Resource]) -> dict[str, str]:
    """The page's patients' names, in one search by id."""
    ids = sorted({i for t in tasks if (i := R.ref_id(t.get("for"), "Patient"))})
    if not ids:
        return {}
    bundle = await fhir.search(
        "Patient", [("_id", ",".join(ids)), ("_count", str(len(ids))), ("_total", "none")]
    )
    return {str(e["resource"]["id"]): patient_label(e["resource"]) for e in bundle.get("entry") or []}


def _updated(task: Resource) -> str:
    return str((task.get("meta") or {}).get("lastUpdated") or "")


def outcome_code(task: Resource) -> str | None:
    for coding in (task.get("businessStatus") or {}).get("coding") or []:
        if isinstance(coding, dict) and coding.get("code") in R.OUTCOME_LABELS:
            return str(coding["code"])
    return None


def _row(task: Resource, names: dict[str, str]) -> Row:
    patient = R.ref_id(task.get("for"), "Patient")
    return Row(
        task_id=str(task.get("id")),
        follow_up_id=R.first_identifier_value(task, R.FOLLOW_UP_SYSTEM) or "",
        status=str(task.get("status")),
        outcome=outcome_code(task),
        patient=patient,
        patient_name=names.get(patient or ""),
        requester=R.ref_id(task.get("requester"), "Organization"),
        authored=task.get("authoredOn"),
        last_updated=_updated(task),
    )


async def count(fhir: FhirClient, params: list[tuple[str, str]]) -> int:
    # every Task counts: the embedded store holds no other Tasks than follow-ups, and an identifier
    # search here would scan every Task (1.8 s a count at 100,000)
    bundle = await fhir.search("Task", [*params, ("_summary", "count")])
    return int(bundle.get("total") or 0)


@dataclass(frozen=True)
class Summary:
    by_status: dict[str, int]
    by_outcome: dict[str, int]
    received_24h: int
    completed_24h: int


async def summary(fhir: FhirClient, *, now: datetime | None = None) -> Summary:
    """The dashboard's figures: one count search each, run together."""
    since = ((now or datetime.now(UTC)) - timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ")
    searches: list[list[tuple[str, str]]] = [[("status", s)] for s in TASK_STATUSES]
    searches += [[("business-status", o)] for o in R.OUTCOME_LABELS]
    searches += [[("authored-on", f"ge{since}")], [("status", "completed"), ("modified", f"ge{since}")]]
    counts = await asyncio.gather(*(count(fhir, s) for s in searches))
    n = len(TASK_STATUSES)
    m = n + len(R.OUTCOME_LABELS)
    return Summary(
        by_status=dict(zip(TASK_STATUSES, counts[:n], strict=True)),
        by_outcome=dict(zip(R.OUTCOME_LABELS, counts[n:m], strict=True)),
        received_24h=counts[m],
        completed_24h=counts[m + 1],
    )


async def organizations(fhir: FhirClient) -> list[tuple[str, str]]:
    """(id, name) of the requesters known, for the filter's choices (the first 200)."""
    bundle = await fhir.search("Organization", [("_count", "200"), ("_sort", "name")])
    out = []
    for entry in bundle.get("entry") or []:
        org = entry["resource"]
        name = org.get("name") if isinstance(org.get("name"), str) else None
        out.append((str(org["id"]), name or R.first_identifier_value(org) or str(org["id"])))
    return out


# -- one follow-up ---------------------------------------------------------------------------


@dataclass
class FollowUp:
    """A follow-up and every resource of its life, as far as each can be read."""

    task: Resource
    follow_up_id: str
    service_request: Resource | None = None
    patient: Resource | None = None
    requester: Resource | None = None
    subscription: Resource | None = None
    encounter: Resource | None = None
    cht_record_id: str | None = None
    missing: list[str] = field(default_factory=list)  # references that could not be read

    @property
    def outcome(self) -> str | None:
        return outcome_code(self.task)


async def _maybe(fhir: FhirClient, rtype: str, rid: str | None, missing: list[str]) -> Resource | None:
    if not rid:
        return None
    try:
        return await fhir.read(rtype, rid)
    except (ResourceNotFound, ResourceGone):
        missing.append(f"{rtype}/{rid}")
        return None


async def load(fhir: FhirClient, task_id: str) -> FollowUp | None:
    """The follow-up whose Task has this id (None when it is no follow-up)."""
    try:
        task = await fhir.read("Task", task_id)
    except (ResourceNotFound, ResourceGone):
        return None
    except FhirError:
        return None
    follow_up_id = R.first_identifier_value(task, R.FOLLOW_UP_SYSTEM)
    if follow_up_id is None:
        return None
    found = FollowUp(task, follow_up_id, cht_record_id=R.first_identifier_value(task, R.CHT_RECORD_SYSTEM))
    encounter_id = None
    for item in task.get("output") or []:
        if isinstance(item, dict) and (item.get("type") or {}).get("text") == "encounter":
            encounter_id = R.ref_id(item.get("valueReference"), "Encounter")
    (
        found.service_request,
        found.patient,
        found.requester,
        found.subscription,
        found.encounter,
    ) = await asyncio.gather(
        _maybe(fhir, "ServiceRequest", R.task_service_request_id(task), found.missing),
        _maybe(fhir, "Patient", R.ref_id(task.get("for"), "Patient"), found.missing),
        _maybe(fhir, "Organization", R.ref_id(task.get("requester"), "Organization"), found.missing),
        _maybe(fhir, "Subscription", R.task_subscription_id(task), found.missing),
        _maybe(fhir, "Encounter", encounter_id, found.missing),
    )
    return found


def patient_label(patient: Resource | None) -> str:
    if patient is None:
        return "-"
    for name in patient.get("name") or []:
        if isinstance(name, dict):
            if name.get("text"):
                return str(name["text"])
            given = " ".join(str(g) for g in name.get("given") or [])
            family = str(name.get("family") or "")
            # the CHT has one name field: pushed as both given and family, it is said once
            text = given if family == given else f"{given} {family}".strip()
            if text:
                return text
    return str(patient.get("id"))
