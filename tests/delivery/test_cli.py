"""``cht-interop outbox list | show | retry`` through typer's CliRunner, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cht_interop.cli import app
from cht_interop.db import Database
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import NewJob

runner = CliRunner()


async def _seed(url: str) -> tuple[int, int]:
    """One dead job (two attempts, the last with a 404) and one pending job."""
    db = Database(url)
    try:
        async with db.transaction() as conn:
            dead_id, pending_id = await outbox.enqueue(
                conn,
                [
                    NewJob(
                        "fhir.subscription-notification", "https://emr.example/cb", {"subscription_id": "s1"}
                    ),
                    NewJob("cht.record", "cht", {"n": 1}),
                ],
            )
            [job] = await outbox.claim(
                conn, kinds=["fhir.subscription-notification"], worker_id="w1", lease_seconds=30
            )
            await outbox.reschedule(
                conn, job, worker_id="w1", next_attempt_at=outbox.utcnow(), error="HTTP 500"
            )
            [job] = await outbox.claim(
                conn, kinds=["fhir.subscription-notification"], worker_id="w1", lease_seconds=30
            )
            await outbox.dead_letter(
                conn, job, worker_id="w1", reason="HTTP 404: no such callback", http_status=404
            )
        return dead_id, pending_id
    finally:
        await db.dispose()


@pytest.fixture
def seeded(database_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    return asyncio.run(_seed(database_url))


def test_list_shows_counts_and_jobs(seeded: tuple[int, int]) -> None:
    dead_id, pending_id = seeded
    result = runner.invoke(app, ["outbox", "list"])
    assert result.exit_code == 0, result.output
    assert "pending: 1  running: 0  done: 0  dead: 1" in result.output
    lines = result.output.splitlines()
    assert any(line.split()[:3] == [str(dead_id), "dead", "2"] for line in lines)
    assert any(line.split()[:3] == [str(pending_id), "pending", "0"] for line in lines)
    assert "last error: HTTP 404: no such callback" in result.output


def test_list_filters_by_status(seeded: tuple[int, int]) -> None:
    dead_id, _ = seeded
    result = runner.invoke(app, ["outbox", "list", "--status", "dead"])
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.output.splitlines()[2:] if line.split()[0].isdigit()]
    assert rows == [str(dead_id)]
    bad = runner.invoke(app, ["outbox", "list", "--status", "lost"])
    assert bad.exit_code != 0 and "status must be one of" in bad.output


def test_show_lists_every_attempt(seeded: tuple[int, int]) -> None:
    dead_id, _ = seeded
    result = runner.invoke(app, ["outbox", "show", str(dead_id)])
    assert result.exit_code == 0, result.output
    assert "status:              dead" in result.output
    assert '"subscription_id": "s1"' in result.output
    attempt_lines = [line for line in result.output.splitlines() if line.strip().startswith("#")]
    assert len(attempt_lines) == 2
    assert "retry" in attempt_lines[0] and "dead" in attempt_lines[1] and "HTTP 404" in attempt_lines[1]
    assert "error: HTTP 500" in result.output
    missing = runner.invoke(app, ["outbox", "show", "999999"])
    assert missing.exit_code == 1 and "no outbox job 999999" in missing.output


def test_retry_puts_a_dead_job_back_and_refuses_others(seeded: tuple[int, int], database_url: str) -> None:
    dead_id, pending_id = seeded
    result = runner.invoke(app, ["outbox", "retry", str(dead_id)])
    assert result.exit_code == 0, result.output
    assert f"job {dead_id} is pending again (2 earlier attempt(s) kept)" in result.output

    async def status() -> str:
        db = Database(database_url)
        try:
            async with db.transaction() as conn:
                record = await outbox.get_job(conn, dead_id)
        finally:
            await db.dispose()
        assert record is not None and len(record.attempt_log) == 2
        return record.status

    assert asyncio.run(status()) == "pending"
    again = runner.invoke(app, ["outbox", "retry", str(dead_id)])
    assert again.exit_code == 1 and "only a dead job can be retried" in again.output
    other = runner.invoke(app, ["outbox", "retry", str(pending_id)])
    assert other.exit_code == 1
    missing = runner.invoke(app, ["outbox", "retry", "424242"])
    assert missing.exit_code == 1 and "no outbox job 424242" in missing.output


def test_data_dir_option_on_a_fresh_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["outbox", "list", "--data-dir", str(tmp_path / "fresh")])
    assert result.exit_code == 0, result.output
    assert "no jobs" in result.output
    assert (tmp_path / "fresh" / "cht-interop.sqlite3").exists()


def test_purge_deletes_only_old_delivered_jobs(seeded: tuple[int, int], database_url: str) -> None:
    dead_id, pending_id = seeded

    async def deliver_one() -> int:
        db = Database(database_url)
        try:
            async with db.transaction() as conn:
                await outbox.enqueue(conn, [NewJob("test.done", "peer", {"n": 2})])
                [job] = await outbox.claim(
                    conn, kinds=["test.done"], worker_id="w", lease_seconds=30, limit=1
                )
                assert await outbox.complete(conn, job, worker_id="w")
            return job.id
        finally:
            await db.dispose()

    done_id = asyncio.run(deliver_one())
    kept = runner.invoke(app, ["outbox", "purge", "--older-than-days", "1"])
    assert kept.exit_code == 0 and "deleted 0 delivered job(s)" in kept.output
    gone = runner.invoke(app, ["outbox", "purge", "--older-than-days", "0"])
    assert gone.exit_code == 0 and "deleted 1 delivered job(s)" in gone.output
    assert runner.invoke(app, ["outbox", "show", str(done_id)]).exit_code == 1
    for job_id in (dead_id, pending_id):
        assert runner.invoke(app, ["outbox", "show", str(job_id)]).exit_code == 0


async def _seed_pending_hook(url: str) -> int:
    """A dead job whose on_dead hook failed once and waits to run again."""
    db = Database(url)
    try:
        async with db.transaction() as conn:
            [job_id] = await outbox.enqueue(conn, [NewJob("cht.record", "cht", {"follow_up": "f1"})])
            [job] = await outbox.claim(conn, kinds=["cht.record"], worker_id="w1", lease_seconds=30)
            now = outbox.utcnow()
            await outbox.dead_letter(
                conn, job, worker_id="w1", reason="HTTP 401 from the CHT", hook_until=now, now=now
            )
            retry_at = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
            await outbox.finish_hooks(
                conn, [outbox.HookRun(job_id, "FHIR server unavailable")], worker_id="w1", retry_at=retry_at
            )
        return job_id
    finally:
        await db.dispose()


def test_list_and_show_point_out_a_pending_hook(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    job_id = asyncio.run(_seed_pending_hook(database_url))
    listed = runner.invoke(app, ["outbox", "list"])
    assert listed.exit_code == 0, listed.output
    assert "dead: 1  discarded: 0  (on_dead hook pending: 1)" in listed.output
    assert (
        "on_dead hook: PENDING (runs at a worker's next sweep, not before 2031-01-02 03:04:05); "
        "last failure: FHIR server unavailable"
    ) in listed.output
    shown = runner.invoke(app, ["outbox", "show", str(job_id)])
    assert shown.exit_code == 0, shown.output
    assert "on_dead hook:        PENDING (runs at a worker's next sweep, not before 2031-01-02" in (
        shown.output
    )


def test_a_dead_job_without_a_hook_shows_none(seeded: tuple[int, int]) -> None:
    """The seeded dead job has no hook (dead_letter without hook_until): nothing pending to show."""
    dead_id, _ = seeded
    listed = runner.invoke(app, ["outbox", "list"])
    assert "on_dead hook" not in listed.output
    shown = runner.invoke(app, ["outbox", "show", str(dead_id)])
    assert "on_dead hook:        -" in shown.output
