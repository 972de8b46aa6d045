"""What the demo shows at the end: a timeline per patient, then latencies and throughput.

Times are seconds since the LTFU list was sent; latencies are per patient: list sent → the CHW's
task showed (the CHT record made and synced), and the CHW's answer → the facility's callback
(the CHT's push, the Encounter stored, the follow-up completed, the notification delivered).
"""

from __future__ import annotations

import statistics

from rich.console import Console
from rich.table import Table

from cht_interop.demo.story import Row, Story

OUTCOME_LABELS = {
    "returned_to_care": "returning to care",
    "refused": "refused",
    "not_located": "not located",
    "moved_away": "moved away",
    "died": "died",
    "other": "other",
}


def _at(moment: float | None, origin: float) -> str:
    return "—" if moment is None else f"{moment - origin:7.2f}"


def _span(start: float | None, end: float | None) -> str:
    return "—" if start is None or end is None else f"{end - start:6.2f}"


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max (inclusive method: exact on small samples)."""
    if not values:
        return {}
    if len(values) == 1:
        return {"p50": values[0], "p90": values[0], "p99": values[0], "max": values[0]}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": max(values)}


def timeline(story: Story, *, show: int) -> Table:
    origin = story.list_sent or story.started
    table = Table(title="Timeline (seconds since the LTFU list was sent)", show_lines=False)
    for header in ("patient", "CHW", "requested", "CHT task", "CHW done", "outcome", "callback"):
        left = header in ("patient", "CHW", "outcome")
        table.add_column(header, justify="left" if left else "right", no_wrap=True)
    table.add_column("→ task", justify="right", no_wrap=True)
    table.add_column("done → callback", justify="right", no_wrap=True)
    rows: list[Row] = story.rows[:show]
    for row in rows:
        outcome = OUTCOME_LABELS.get(row.outcome or "", row.outcome or "—")
        if row.error:
            outcome = f"[red]{row.error}[/red]"
        elif row.callback is not None and row.callback_outcome != row.outcome:
            outcome += f" [red](callback says {row.callback_outcome})[/red]"
        table.add_row(
            row.patient.name,
            row.patient.chw,
            _at(row.requested, origin),
            _at(row.task_seen, origin),
            _at(row.completed, origin),
            outcome,
            _at(row.callback, origin) if row.callback else "[red]missing[/red]",
            _span(row.requested, row.task_seen),
            _span(row.completed, row.callback),
        )
    if len(story.rows) > show:
        table.caption = f"… and {len(story.rows) - show} more patients (--show to see more)"
    return table


def summary(story: Story, console: Console) -> None:
    rows = story.rows
    total = len(rows)
    arrived = [r for r in rows if r.callback is not None]
    origin = story.list_sent or story.started
    console.print(
        f"[bold]{total}[/bold] patients, {story.chws} CHW(s); callbacks received: "
        f"[bold]{len(arrived)}/{total}[/bold]"
        + (f" ({story.duplicates} duplicate deliveries dropped)" if story.duplicates else "")
    )
    if story.list_answered is not None and story.list_sent is not None:
        took = story.list_answered - story.list_sent
        console.print(
            f"LTFU list of {total} answered in {took:.2f} s ({total / max(took, 1e-9):.0f} follow-ups/s)"
        )
    seen = [r.task_seen for r in rows if r.task_seen is not None]
    if seen:
        span = max(seen) - origin
        console.print(
            f"CHT tasks: {len(seen)} in {span:.2f} s after the list ({len(seen) / max(span, 1e-9):.1f}/s)"
        )
    if arrived:
        first_done = min(r.completed for r in arrived if r.completed is not None)
        last = max(r.callback for r in arrived if r.callback is not None)
        span = last - first_done
        console.print(
            f"Callbacks: {len(arrived)} in {span:.2f} s after the first CHW answer "
            f"({len(arrived) / max(span, 1e-9):.1f}/s)"
        )
    for label, values in (
        ("list → CHT record", [r.accepted - r.requested for r in rows if r.accepted and r.requested]),
        ("list → CHT task", [r.task_seen - r.requested for r in rows if r.task_seen and r.requested]),
        ("CHW answer → callback", [r.callback - r.completed for r in rows if r.callback and r.completed]),
    ):
        cuts = percentiles(values)
        if cuts:
            console.print(f"{label:>22}: " + ", ".join(f"{k} {v:.2f} s" for k, v in cuts.items()))
    if story.completed_requests is not None:
        console.print(
            f"ServiceRequests now completed (GET /fhir/ServiceRequest?status=completed): "
            f"{story.completed_requests}/{total}"
        )
    if story.missing:
        names = ", ".join(r.patient.name for r in story.missing[:20])
        more = f" and {len(story.missing) - 20} more" if len(story.missing) > 20 else ""
        console.print(f"[red bold]Missing callbacks ({len(story.missing)}):[/red bold] {names}{more}")
