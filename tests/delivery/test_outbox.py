"""The outbox repository on SQLite and PostgreSQL: enqueue, claim, leases, ordering, retry by hand."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select

from cht_interop.db import Database, sync_url
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import NewJob
from cht_interop.delivery.tables import outbox_jobs

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def committed_job_count(url: str) -> int:
    """Count jobs through a separate plain connection: only what is committed is visible."""
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(outbox_jobs)).scalar_one())
    finally:
        engine.dispose()


def jobs(n: int, *, kind: str = "test.kind", key: str | None = None) -> list[NewJob]:
    return [NewJob(kind=kind, target=f"peer-{i}", payload={"n": i}, ordering_key=key) for i in range(n)]


async def test_enqueue_is_visible_only_after_commit(db: Database, database_url: str) -> None:
    async with db.transaction() as conn:
        ids = await outbox.enqueue(conn, jobs(3))
        assert len(ids) == 3
        assert committed_job_count(database_url) == 0
    assert committed_job_count(database_url) == 3


async def test_rolled_back_transaction_leaves_no_job(db: Database, database_url: str) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with db.transaction() as conn:
            await outbox.enqueue(conn, jobs(5))
            raise Boom
    assert committed_job_count(database_url) == 0
    async with db.transaction() as conn:
        assert await outbox.claim(conn, kinds=["test.kind"], worker_id="w", lease_seconds=30) == []


async def test_bulk_enqueue_returns_ids_in_order_with_payloads(db: Database) -> None:
    many = [NewJob(kind="test.kind", target="t", payload={"n": i, "nested": {"x": [i]}}) for i in range(2500)]
    async with db.transaction() as conn:
        ids = await outbox.enqueue(conn, many)
    assert len(ids) == 2500 and ids == sorted(ids)
    async with db.transaction() as conn:
        first, last = await outbox.get_job(conn, ids[0]), await outbox.get_job(conn, ids[-1])
    assert first is not None and first.payload == {"n": 0, "nested": {"x": [0]}}
    assert last is not None and last.payload == {"n": 2499, "nested": {"x": [2499]}}
    assert first.status == "pending" and first.attempts == 0
    assert first.notification_id != last.notification_id


async def test_claim_marks_running_and_opens_an_attempt(db: Database) -> None:
    async with db.transaction() as conn:
        [job_id] = await outbox.enqueue(conn, jobs(1), now=T0)
    async with db.transaction() as conn:
        [job] = await outbox.claim(conn, kinds=["test.kind"], worker_id="w1", lease_seconds=30, now=T0)
    assert job.id == job_id and job.attempts == 0 and job.payload == {"n": 0} and job.notification_id
    async with db.transaction() as conn:
        record = await outbox.get_job(conn, job_id)
        again = await outbox.claim(conn, kinds=["test.kind"], worker_id="w2", lease_seconds=30, now=T0)
    assert again == []
    assert record is not None and record.status == "running" and record.claimed_by == "w1"
    assert record.lease_until == T0 + timedelta(seconds=30)
    assert [(a.number, a.worker, a.outcome) for a in record.attempt_log] == [(1, "w1", None)]


async def test_jobs_held_until_later_are_claimed_once_made_due(db: Database) -> None:
    """Jobs enqueued due in a minute are not claimed now; ``make_due`` makes those still pending
    due at once (a job already running is left as it is), and their retry horizon counts from then."""
    later = T0 + timedelta(seconds=60)
    held = [NewJob(kind="test.kind", target=f"peer-{i}", due=later) for i in range(3)]
    async with db.transaction() as conn:
        ids = await outbox.enqueue(conn, held, now=T0)
        assert await outbox.claim(conn, kinds=["test.kind"], worker_id="w", lease_seconds=30, now=T0) == []
    async with db.transaction() as conn:  # the first runs already (its deadline passed, say)
        [running] = await outbox.claim(
            conn, kinds=["test.kind"], worker_id="w", lease_seconds=30, now=later, limit=1
        )
    made_due = T0 + timedelta(seconds=5)
    async with db.transaction() as conn:
        await outbox.make_due(conn, ids, now=made_due)
    async with db.transaction() as conn:
        claimed = await outbox.claim(
            conn, kinds=["test.kind"], worker_id="w2", lease_seconds=30, now=made_due
        )
        records = [await outbox.get_job(conn, i) for i in ids]
    assert sorted(j.id for j in claimed) == sorted(set(ids) - {running.id})
    assert [r.claimed_by for r in records if r is not None] == ["w" if i == running.id else "w2" for i in ids]
    assert all(
        r is not None and r.horizon_from == made_due for r in records if r is not None and r.id != running.id
    )


async def test_unknown_kinds_are_never_claimed(db: Database) -> None:
    async with db.transaction() as conn:
        await outbox.enqueue(conn, jobs(2, kind="nobody.handles"))
    async with db.transaction() as conn:
        assert await outbox.claim(conn, kinds=["test.kind"], worker_id="w", lease_seconds=30) == []
        assert await outbox.claim(conn, kinds=[], worker_id="w", lease_seconds=30) == []
        assert (await outbox.count_by_status(conn))["pending"] == 2


async def test_expired_lease_is_claimed_again_and_old_worker_cannot_finish(db: Database) -> None:
    async with db.transaction() as conn:
        [job_id] = await outbox.enqueue(conn, jobs(1), now=T0)
    async with db.transaction() as conn:
        [first] = await outbox.claim(
            conn, kinds=["test.kind"], worker_id="dead-worker", lease_seconds=30, now=T0
        )
    async with db.transaction() as conn:
        assert (
            await outbox.claim(
                conn, kinds=["test.kind"], worker_id="w2", lease_seconds=30, now=T0 + timedelta(seconds=29)
            )
            == []
        )
    later = T0 + timedelta(seconds=31)
    async with db.transaction() as conn:
        [second] = await outbox.claim(conn, kinds=["test.kind"], worker_id="w2", lease_seconds=30, now=later)
    assert second.id == job_id and second.attempts == 1
    async with db.transaction() as conn:
        # the first worker comes back late: its report is refused, the job stays with w2
        assert not await outbox.complete(conn, first, worker_id="dead-worker", now=later)
        assert await outbox.complete(conn, second, worker_id="w2", http_status=200, now=later)
        record = await outbox.get_job(conn, job_id)
    assert record is not None and record.status == "done" and record.attempts == 2
    assert [(a.number, a.worker, a.outcome) for a in record.attempt_log] == [
        (1, "dead-worker", "lease-expired"),
        (2, "w2", "success"),
    ]
    assert record.attempt_log[1].http_status == 200


async def test_per_key_order_blocks_only_its_own_key(db: Database) -> None:
    async with db.transaction() as conn:
        a1, a2 = await outbox.enqueue(conn, jobs(2, key="Subscription/a"), now=T0)
        [b1] = await outbox.enqueue(conn, jobs(1, key="Subscription/b"), now=T0)
        [free] = await outbox.enqueue(conn, jobs(1), now=T0)
    async with db.transaction() as conn:
        claimed = await outbox.claim(conn, kinds=["test.kind"], worker_id="w", lease_seconds=30, now=T0)
    assert sorted(j.id for j in claimed) == [a1, b1, free]  # a2 waits behind a1
    by_id = {j.id: j for j in claimed}
    async with db.transaction() as conn:
        # a1 fails and is due again in a minute: a2 must keep waiting; b's next job proceeds
        await outbox.reschedule(
            conn,
            by_id[a1],
            worker_id="w",
            next_attempt_at=T0 + timedelta(minutes=1),
            error="HTTP 500",
            now=T0,
        )
        await outbox.complete(conn, by_id[b1], worker_id="w", now=T0)
        await outbox.complete(conn, by_id[free], worker_id="w", now=T0)
        [b2] = await outbox.enqueue(conn, jobs(1, key="Subscription/b"), now=T0)
    async with db.transaction() as conn:
        claimed = await outbox.claim(conn, kinds=["test.kind"], worker_id="w", lease_seconds=30, now=T0)
    assert [j.id for j in claimed] == [b2]
    async with db.transaction() as conn:
        await outbox.complete(conn, claimed[0], worker_id="w", now=T0)
        [retry] = await outbox.claim(
            conn, kinds=["test.kind"], worker_id="w", lease_seconds=30, now=T0 + timedelta(minutes=1)
        )
    assert retry.id == a1 and retry.attempts == 1
    async with db.transaction() as conn:
        await outbox.dead_letter(conn, retry, worker_id="w", reason="gave up", now=T0)
    async with db.transaction() as conn:
        claimed = await outbox.claim(
            conn, kinds=["test.kind"], worker_id="w", lease_seconds=30, now=T0 + timedelta(minutes=1)
        )
    assert [j.id for j in claimed] == [a2]  # a dead job no longer blocks its key


async def test_concurrent_claimers_never_take_the_same_job(database_url: str) -> None:
    """Several claimers, each on its own connection pool, race until the outbox is empty."""
    setup = Database(database_url)
    async with setup.transaction() as conn:
        ids = await outbox.enqueue(conn, jobs(120))
    await setup.dispose()
    databases = [Database(database_url) for _ in range(4)]
    taken: list[tuple[str, int]] = []

    async def claimer(name: str, database: Database) -> None:
        while True:
            async with database.transaction() as conn:
                got = await outbox.claim(
                    conn, kinds=["test.kind"], worker_id=name, lease_seconds=300, limit=5
                )
                for job in got:
                    assert await outbox.complete(conn, job, worker_id=name)
            if not got:
                return
            taken.extend((name, job.id) for job in got)
            await asyncio.sleep(0)

    try:
        await asyncio.gather(*(claimer(f"w{i}", d) for i, d in enumerate(databases)))
    finally:
        for d in databases:
            await d.dispose()
    claimed_ids = [job_id for _, job_id in taken]
    assert sorted(claimed_ids) == sorted(ids)  # every job exactly once
    assert len(claimed_ids) == len(set(claimed_ids))


@pytest.mark.postgres
async def test_postgres_claim_skips_rows_locked_by_an_open_claim(pg_url: str) -> None:
    """Claimer A holds its claim open (rows locked, not committed); B must take other jobs, not wait."""
    from tests.conftest import truncate_pg

    truncate_pg(pg_url)
    a, b = Database(pg_url), Database(pg_url)
    try:
        async with a.transaction() as conn:
            ids = await outbox.enqueue(conn, jobs(6))
        async with a.transaction() as conn_a:
            got_a = await outbox.claim(conn_a, kinds=["test.kind"], worker_id="a", lease_seconds=30, limit=3)
            async with b.transaction() as conn_b:
                got_b = await asyncio.wait_for(
                    outbox.claim(conn_b, kinds=["test.kind"], worker_id="b", lease_seconds=30, limit=10), 10
                )
        assert [j.id for j in got_a] == ids[:3]
        assert [j.id for j in got_b] == ids[3:]
        async with a.transaction() as conn:
            records = [await outbox.get_job(conn, i) for i in ids]
        assert [r.claimed_by for r in records if r] == ["a"] * 3 + ["b"] * 3
    finally:
        await a.dispose()
        await b.dispose()


async def test_retry_dead_by_hand(db: Database) -> None:
    async with db.transaction() as conn:
        [job_id] = await outbox.enqueue(conn, jobs(1), now=T0)
        [job] = await outbox.claim(conn, kinds=["test.kind"], worker_id="w", lease_seconds=30, now=T0)
        await outbox.dead_letter(
            conn, job, worker_id="w", reason="HTTP 404 from peer", http_status=404, now=T0
        )
    later = T0 + timedelta(days=2)
    async with db.transaction() as conn:
        record = await outbox.retry_dead(conn, job_id, now=later)
    assert record.status == "pending" and record.attempts == 1
    assert record.horizon_from == later and record.next_attempt_at == later
    assert record.last_error == "HTTP 404 from peer"
    assert [(a.outcome, a.http_status) for a in record.attempt_log] == [("dead", 404)]
    async with db.transaction() as conn:
        [again] = await outbox.claim(conn, kinds=["test.kind"], worker_id="w", lease_seconds=30, now=later)
    assert again.id == job_id and again.attempts == 1
    async with db.transaction() as conn:
        with pytest.raises(outbox.JobNotRetryable):
            await outbox.retry_dead(conn, job_id)
    async with db.transaction() as conn:
        with pytest.raises(outbox.JobNotFound):
            await outbox.retry_dead(conn, 999_999)


async def test_list_and_count(db: Database) -> None:
    async with db.transaction() as conn:
        ids = await outbox.enqueue(conn, jobs(4), now=T0)
        [job] = await outbox.claim(
            conn, kinds=["test.kind"], worker_id="w", lease_seconds=30, limit=1, now=T0
        )
        await outbox.dead_letter(conn, job, worker_id="w", reason="no", now=T0)
    async with db.transaction() as conn:
        dead = await outbox.list_jobs(conn, status="dead")
        everything = await outbox.list_jobs(conn)
        page = await outbox.list_jobs(conn, limit=2, before_id=ids[-1])
        counts = await outbox.count_by_status(conn)
    assert [r.id for r in dead] == [ids[0]]
    assert [r.id for r in everything] == list(reversed(ids))
    assert [r.id for r in page] == [ids[2], ids[1]]
    assert counts == {"pending": 3, "running": 0, "done": 0, "dead": 1, "discarded": 0}
