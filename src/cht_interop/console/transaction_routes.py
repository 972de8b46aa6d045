"""Transactions: the journal's rows (every /mediator and /fhir request, every delivery attempt),
one row with its bodies and outbound calls, a follow-up's timeline, and the search that goes from
an OpenHIM transaction id to that timeline. Read-only: the journal's own queries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response

from cht_interop.console.web import Refused, path_for, render, require_admin, services
from cht_interop.gateway.principals import Principal
from cht_interop.journal import store

router = APIRouter()
Admin = Annotated[Principal, Depends(require_admin)]
PAGE_SIZE = 50
OUTCOMES = ["Successful", "Completed", "Completed with error(s)", "Failed", "done", "failed", "dead"]


@dataclass
class Asked:
    """The list's filters as typed, and what they mean for the journal (or why they are wrong)."""

    since: str = ""
    until: str = ""
    status: str = ""
    path: str = ""
    client: str = ""
    follow_up: str = ""
    kind: str = ""
    outcome: str = ""
    problems: list[str] = field(default_factory=list)

    def filters(self) -> store.Filters:
        status, status_class = self._status()
        if self.kind not in ("", "request", "job"):
            self.problems.append(f"kind: {self.kind!r} is neither request nor job")
        if self.outcome and self.outcome not in OUTCOMES:
            self.problems.append(f"outcome: {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        return store.Filters(
            since=self._instant("since", self.since, end=False),
            until=self._instant("until", self.until, end=True),
            status=status,
            status_class=status_class,
            path=self.path.strip() or None,
            client=self.client.strip() or None,
            follow_up_id=self.follow_up.strip() or None,
            kind=self.kind or None,
            outcome=self.outcome or None,
        )

    def _status(self) -> tuple[int | None, int | None]:
        text = self.status.strip().lower()
        if not text:
            return None, None
        if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
            return None, int(text[0])
        if text.isdigit() and 100 <= int(text) <= 599:
            return int(text), None
        self.problems.append(f"status: {self.status!r} is neither an HTTP status (404) nor a class (4xx)")
        return None, None

    def _instant(self, name: str, text: str, *, end: bool) -> datetime | None:
        """A day (the whole day counts: ``until`` a day means to its end) or a time, in UTC."""
        text = text.strip()
        if not text:
            return None
        try:
            if len(text) == 10:
                day = date.fromisoformat(text)
                moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
                return moment + timedelta(days=1) if end else moment
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.problems.append(f"{name}: {text!r} is not a date (2026-01-31) or a time (2026-01-31T14:05)")
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def query(self) -> dict[str, str]:
        return {
            "since": self.since, "until": self.until, "status": self.status, "path": self.path,
            "client": self.client, "follow_up": self.follow_up, "kind": self.kind, "outcome": self.outcome,
        }  # fmt: skip


@router.get("/transactions", name="transactions")
async def transactions(
    request: Request,
    _admin: Admin,
    since: str = "",
    until: str = "",
    status: str = "",
    path: str = "",
    client: str = "",
    follow_up: str = "",
    kind: str = "",
    outcome: str = "",
    after: Annotated[str, Query(max_length=120)] = "",
) -> Response:
    asked = Asked(since, until, status, path, client, follow_up, kind, outcome)
    filters = asked.filters()
    page: store.Page | None = None
    if not asked.problems:
        try:
            async with services(request).db.connect() as conn:
                page = await store.list_entries(conn, filters, after=after or None, limit=PAGE_SIZE)
        except ValueError:
            asked.problems.append("the page link is damaged: start again from the first page")
    return render(
        request, "transactions.html", 400 if asked.problems else 200, section="transactions",
        asked=asked, page=page, outcomes=OUTCOMES, first_page=not after,
    )  # fmt: skip


@router.get("/transactions/find", name="find_transaction")
async def find_transaction(
    request: Request, _admin: Admin, transaction_id: Annotated[str, Query(max_length=200)] = ""
) -> Response:
    """An OpenHIM transaction id (or ours, from X-Transaction-Id) -> its follow-up's timeline, or
    the row itself when it names no follow-up."""
    wanted = transaction_id.strip()
    if not wanted:
        raise Refused(400, "Bad request", "Type a transaction id (OpenHIM's, or our X-Transaction-Id).")
    async with services(request).db.connect() as conn:
        found = await store.timeline_of_transaction(conn, wanted)
        rows = [] if found is not None else await store.entries_of_transaction(conn, wanted)
    if found is not None:
        target = path_for(request, "journal_timeline", {"tx": wanted}, follow_up_id=found.follow_up_id)
    elif rows:
        target = path_for(request, "transaction", entry_id=rows[0].id)
    else:
        raise Refused(
            404, "Not found",
            f"No transaction {wanted!r} in the log (rows older than the retention are deleted; "
            "a request that never reached cht-interop has none).",
        )  # fmt: skip
    return RedirectResponse(target, status_code=303)


@router.get("/transactions/follow-ups/{follow_up_id}", name="journal_timeline")
async def journal_timeline(request: Request, _admin: Admin, follow_up_id: str, tx: str = "") -> Response:
    async with services(request).db.connect() as conn:
        found = await store.timeline(conn, follow_up_id)
    if not found.entries:
        raise Refused(404, "Not found", f"The log has nothing about follow-up {follow_up_id!r}.")
    return render(
        request, "journal_timeline.html", section="transactions", t=found, tx=tx.strip(),
        task_id=_task_id(found.entries),
    )  # fmt: skip


@router.get("/transactions/{entry_id}", name="transaction")
async def transaction(request: Request, _admin: Admin, entry_id: str) -> Response:
    async with services(request).db.connect() as conn:
        entry = await store.get_entry(conn, entry_id)
    if entry is None:
        raise Refused(404, "Not found", f"There is no transaction log row {entry_id!r}.")
    return render(request, "transaction.html", section="transactions", e=entry)


def _task_id(entries: list[store.Entry]) -> str | None:
    """The follow-up's Task, as its starting request noted it (the console's follow-up page)."""
    for entry in entries:
        task: Any = entry.properties.get("taskId")
        if isinstance(task, str) and task:
            return task
    return None
