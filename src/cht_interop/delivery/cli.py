"""``cht-interop outbox …``: look at deliveries and retry dead ones by hand (the console does the same)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cht_interop.db import Database, migrate
from cht_interop.delivery import outbox
from cht_interop.delivery.tables import JOB_STATUSES
from cht_interop.settings import Settings

GROUP_NAME = "outbox"
app = typer.Typer(help="Outbox jobs: list, show with attempts, retry dead ones.", no_args_is_help=True)

T = TypeVar("T")
DataDir = Annotated[Path | None, typer.Option(help="Data dir of the embedded database.")]


def _settings(data_dir: Path | None) -> Settings:
    return Settings(DATA_DIR=data_dir) if data_dir is not None else Settings()


def _with_db(data_dir: Path | None, work: Callable[[Database], Awaitable[T]]) -> T:
    url = _settings(data_dir).resolved_database_url
    migrate(url)  # a no-op when current; lets the command run on a fresh data dir

    async def main() -> T:
        db = Database(url)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _one_line(text: str | None, width: int) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("list")
def list_jobs(
    status: Annotated[
        str | None, typer.Option(help=f"Only this status ({' | '.join(JOB_STATUSES)}).")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only this job kind.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    data_dir: DataDir = None,
) -> None:
    """Jobs, newest first, with their status, attempts and last error (and a dead job's hook still to run)."""
    if status is not None and status not in JOB_STATUSES:
        raise typer.BadParameter(f"status must be one of {', '.join(JOB_STATUSES)}", param_hint="--status")

    async def work(db: Database) -> tuple[list[outbox.JobRecord], dict[str, int], int]:
        async with db.transaction() as conn:
            return (
                await outbox.list_jobs(conn, status=status, kind=kind, limit=limit),
                await outbox.count_by_status(conn),
                await outbox.count_pending_hooks(conn),
            )

    records, counts, hooks_pending = _with_db(data_dir, work)
    summary = "  ".join(f"{name}: {counts[name]}" for name in JOB_STATUSES)
    if hooks_pending:
        summary += f"  (on_dead hook pending: {hooks_pending})"
    typer.echo(summary)
    if not records:
        typer.echo("no jobs")
        return
    typer.echo(
        f"{'ID':>8}  {'STATUS':<8} {'TRIES':>5}  {'NEXT ATTEMPT':<19}  {'KIND':<32} TARGET / LAST ERROR"
    )
    for r in records:
        due = _when(r.next_attempt_at) if r.status == "pending" else "-"
        typer.echo(
            f"{r.id:>8}  {r.status:<8} {r.attempts:>5}  {due:<19}  {r.kind:<32} {_one_line(r.target, 60)}"
        )
        if r.last_error and r.status != "done":
            typer.echo(f"{'':>8}  last error: {_one_line(r.last_error, 120)}")
        if r.dead_hook == "pending":
            typer.echo(f"{'':>8}  {_hook_state(r)}")


def _hook_state(record: outbox.JobRecord) -> str:
    """What became of a dead job's on_dead hook (the domain's record of the failure)."""
    if record.dead_hook is None:
        return "on_dead hook: -"
    if record.dead_hook == "done":
        return "on_dead hook: done"
    text = "on_dead hook: PENDING (runs at a worker's next sweep"
    if record.lease_until is not None:
        text += f", not before {_when(record.lease_until)}"
    text += ")"
    if record.dead_hook_error:
        text += f"; last failure: {_one_line(record.dead_hook_error, 100)}"
    return text


def _show(record: outbox.JobRecord) -> None:
    fields: list[tuple[str, Any]] = [
        ("job", record.id),
        ("status", record.status),
        ("kind", record.kind),
        ("target", record.target),
        ("ordering key", record.ordering_key or "-"),
        ("notification id", record.notification_id),
        ("attempts", record.attempts),
        ("created", _when(record.created_at)),
        ("retry horizon from", _when(record.horizon_from)),
        ("next attempt", _when(record.next_attempt_at) if record.status == "pending" else "-"),
        ("claimed by", record.claimed_by or "-"),
        ("last error", record.last_error or "-"),
        ("on_dead hook", _hook_state(record).removeprefix("on_dead hook: ")),
        ("payload", json.dumps(record.payload, sort_keys=True)),
    ]
    for name, value in fields:
        typer.echo(f"{name + ':':<20} {value}")
    typer.echo("attempts:" if record.attempt_log else "attempts: none yet")
    for a in record.attempt_log:
        http = f"HTTP {a.http_status}" if a.http_status is not None else "-"
        typer.echo(
            f"  #{a.number:<3} {_when(a.started_at)} → {_when(a.finished_at):<19} "
            f"{a.outcome or 'running':<13} {http:<8} {a.worker}"
        )
        if a.error:
            typer.echo(f"       error: {a.error}")
        if a.note:
            typer.echo(f"       note: {a.note}")


@app.command()
def show(job_id: Annotated[int, typer.Argument(help="The job's id.")], data_dir: DataDir = None) -> None:
    """One job with every attempt."""

    async def work(db: Database) -> outbox.JobRecord | None:
        async with db.transaction() as conn:
            return await outbox.get_job(conn, job_id)

    record = _with_db(data_dir, work)
    if record is None:
        typer.echo(f"no outbox job {job_id}", err=True)
        raise typer.Exit(1)
    _show(record)


@app.command()
def retry(
    job_id: Annotated[int, typer.Argument(help="The dead job's id.")], data_dir: DataDir = None
) -> None:
    """Put a dead job back in the queue: attempts are kept, its retry horizon starts again now."""

    async def work(db: Database) -> outbox.JobRecord:
        async with db.transaction() as conn:
            return await outbox.retry_dead(conn, job_id)

    try:
        record = _with_db(data_dir, work)
    except outbox.OutboxError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"job {record.id} is pending again ({record.attempts} earlier attempt(s) kept); "
        "a running worker picks it up at its next poll"
    )


@app.command()
def purge(
    older_than_days: Annotated[
        float, typer.Option(help="Delete delivered jobs finished longer ago than this.")
    ] = 30,
    data_dir: DataDir = None,
) -> None:
    """Delete delivered (done) jobs and their attempts; dead and pending jobs are never touched."""
    cutoff = outbox.utcnow() - timedelta(days=older_than_days)

    async def work(db: Database) -> int:
        async with db.transaction() as conn:
            return await outbox.purge_done(conn, finished_before=cutoff)

    typer.echo(f"deleted {_with_db(data_dir, work)} delivered job(s) finished before {_when(cutoff)} UTC")
