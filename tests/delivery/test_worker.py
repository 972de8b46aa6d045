"""The outbox worker on SQLite and PostgreSQL: success, backoff to the horizon, dead letters, order."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cht_interop.db import Database
from cht_interop.delivery import outbox
from cht_interop.delivery.jobs import DeliveryReceipt, NewJob, PermanentDeliveryError, TransientDeliveryError
from cht_interop.delivery.registry import HandlerRegistry, Job
from cht_interop.delivery.worker import HOOK_SWEEP_SECONDS, OutboxWorker, backoff_delay
from tests.conftest import make_settings

KIND = "test.kind"


class Clock:
    """A hand-moved clock, so a retry schedule can be walked without sleeping."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class TopOfRange(random.Random):
    """Full jitter pinned to its upper bound, to check the exponential envelope exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def enqueue(db: Database, *jobs: NewJob, now: datetime | None = None) -> list[int]:
    async with db.transaction() as conn:
        return await outbox.enqueue(conn, jobs, now=now)


async def get(db: Database, job_id: int) -> outbox.JobRecord:
    async with db.transaction() as conn:
        record = await outbox.get_job(conn, job_id)
    assert record is not None
    return record


def test_backoff_delay_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(7)
    for attempts, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (10, 60.0), (500, 60.0)]:
        delays = [backoff_delay(attempts, initial=1.0, maximum=60.0, rng=rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8 and min(delays) < cap * 0.2  # spread over the whole range


async def test_success_marks_done_and_records_the_attempt(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    seen: list[Job] = []

    async def handler(job: Job) -> DeliveryReceipt:
        seen.append(job)
        return DeliveryReceipt(http_status=204, note="accepted")

    registry = HandlerRegistry()
    registry.register(KIND, handler)
    [job_id] = await enqueue(db, NewJob(KIND, "peer", {"x": 1}, ordering_key="k"))
    worker = OutboxWorker(db, registry, make_settings(tmp_path, database_url))
    outcomes = await worker.drain()
    assert [(o.job_id, o.status) for o in outcomes] == [(job_id, "done")]
    assert seen[0].payload == {"x": 1} and seen[0].attempts == 0 and seen[0].notification_id
    record = await get(db, job_id)
    assert record.status == "done" and record.attempts == 1
    [attempt] = record.attempt_log
    assert (attempt.outcome, attempt.http_status, attempt.note) == ("success", 204, "accepted")
    assert attempt.finished_at is not None


async def test_transient_failures_back_off_exponentially_until_the_horizon_then_dead(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    start = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    clock = Clock(start)
    calls: list[tuple[int, str]] = []
    dead: list[tuple[int, str]] = []

    async def handler(job: Job) -> None:
        calls.append((job.attempts, job.notification_id))
        raise TransientDeliveryError("HTTP 503 from peer", http_status=503)

    async def on_dead(job: Job, reason: str) -> None:
        dead.append((job.id, reason))

    registry = HandlerRegistry()
    registry.register(KIND, handler, on_dead=on_dead)
    settings = make_settings(
        tmp_path,
        database_url,
        DELIVERY_INITIAL_BACKOFF_SECONDS=1,
        DELIVERY_MAX_BACKOFF_SECONDS=8,
        DELIVERY_HORIZON_SECONDS=30,
    )
    worker = OutboxWorker(db, registry, settings, rng=TopOfRange(), clock=clock)
    [job_id] = await enqueue(db, NewJob(KIND, "peer", {}), now=start)

    delays: list[float] = []
    for _ in range(20):
        outcomes = await worker.run_once()
        assert len(outcomes) == 1
        if outcomes[0].status == "dead":
            break
        assert outcomes[0].status == "retry"
        record = await get(db, job_id)
        assert record.status == "pending" and record.last_error == "HTTP 503 from peer"
        # nothing is due before the scheduled time
        assert await worker.run_once() == []
        delays.append((record.next_attempt_at - clock.now).total_seconds())
        clock.now = record.next_attempt_at
    # 1, 2, 4, 8 (cap), 8, then the horizon end (t=30) rather than t=31
    assert delays == [1, 2, 4, 8, 8, 7]
    assert (clock.now - start).total_seconds() == 30
    record = await get(db, job_id)
    assert record.status == "dead" and record.attempts == 7
    assert [a.outcome for a in record.attempt_log] == ["retry"] * 6 + ["dead"]
    assert all(a.http_status == 503 for a in record.attempt_log)
    assert len({nid for _, nid in calls}) == 1  # one stable notification id across every attempt
    assert [n for n, _ in calls] == list(range(7))
    assert len(dead) == 1 and dead[0][0] == job_id
    assert "7 attempt(s)" in dead[0][1] and "HTTP 503 from peer" in dead[0][1]
    assert record.last_error == dead[0][1]


async def test_permanent_failure_is_dead_at_once(db: Database, tmp_path: Path, database_url: str) -> None:
    dead: list[str] = []

    async def handler(job: Job) -> None:
        raise PermanentDeliveryError("Subscription/abc was deleted", http_status=None)

    async def on_dead(job: Job, reason: str) -> None:
        dead.append(reason)

    registry = HandlerRegistry()
    registry.register(KIND, handler, on_dead=on_dead)
    [job_id] = await enqueue(db, NewJob(KIND, "peer", {}))
    outcomes = await OutboxWorker(db, registry, make_settings(tmp_path, database_url)).drain()
    assert [o.status for o in outcomes] == ["dead"]
    record = await get(db, job_id)
    assert record.status == "dead" and record.attempts == 1
    assert record.last_error == "Subscription/abc was deleted"
    assert dead == ["Subscription/abc was deleted"]


async def test_any_other_exception_is_retried_and_a_failing_hook_does_not_stop_the_worker(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    async def handler(job: Job) -> None:
        if job.payload["kind"] == "bug":
            raise ValueError("unexpected shape")
        raise PermanentDeliveryError("refused")

    async def on_dead(job: Job, reason: str) -> None:
        raise RuntimeError("hook broke")

    registry = HandlerRegistry()
    registry.register(KIND, handler, on_dead=on_dead)
    bug, refused = await enqueue(
        db, NewJob(KIND, "p", {"kind": "bug"}), NewJob(KIND, "p", {"kind": "refused"})
    )
    outcomes = await OutboxWorker(db, registry, make_settings(tmp_path, database_url)).run_once()
    assert sorted((o.job_id, o.status) for o in outcomes) == [(bug, "retry"), (refused, "dead")]
    assert (await get(db, bug)).last_error == "ValueError: unexpected shape"


async def test_job_without_a_handler_stays_pending(db: Database, tmp_path: Path, database_url: str) -> None:
    registry = HandlerRegistry()

    async def handler(job: Job) -> None:
        return None

    registry.register(KIND, handler)
    [orphan] = await enqueue(db, NewJob("nobody.handles", "p", {}))
    assert await OutboxWorker(db, registry, make_settings(tmp_path, database_url)).drain() == []
    assert (await get(db, orphan)).status == "pending"


async def test_run_is_woken_by_a_commit_and_keeps_per_key_order(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    """A long poll interval: jobs still run promptly because the enqueueing commit wakes the worker.

    Key A's first job is held open: A's second job must wait, while key B's jobs go through.
    """
    release_a1 = asyncio.Event()
    started: list[str] = []
    finished: list[str] = []
    progress = asyncio.Event()

    async def handler(job: Job) -> None:
        name = job.payload["name"]
        started.append(name)
        if name == "a1":
            await release_a1.wait()
        finished.append(name)
        progress.set()

    registry = HandlerRegistry()
    registry.register(KIND, handler)
    settings = make_settings(tmp_path, database_url, DELIVERY_POLL_SECONDS=600)
    worker = OutboxWorker(db, registry, settings, concurrency=4)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.05)  # the worker is now waiting on its (long) poll
    await enqueue(
        db,
        NewJob(KIND, "p", {"name": "a1"}, ordering_key="A"),
        NewJob(KIND, "p", {"name": "a2"}, ordering_key="A"),
        NewJob(KIND, "p", {"name": "b1"}, ordering_key="B"),
    )
    await enqueue(db, NewJob(KIND, "p", {"name": "b2"}, ordering_key="B"))

    async def until(condition: object) -> None:
        async with asyncio.timeout(20):
            while not condition():  # type: ignore[operator]
                progress.clear()
                await progress.wait()

    await until(lambda: {"b1", "b2"} <= set(finished))
    assert "a1" in started and "a2" not in started
    release_a1.set()
    await until(lambda: "a2" in finished)
    assert finished.index("a1") < finished.index("a2")
    assert finished.index("b1") < finished.index("b2")
    stop.set()
    await asyncio.wait_for(task, 20)


async def test_stop_lets_the_delivery_in_flight_finish(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handler(job: Job) -> None:
        entered.set()
        await release.wait()

    registry = HandlerRegistry()
    registry.register(KIND, handler)
    [job_id] = await enqueue(db, NewJob(KIND, "p", {}))
    worker = OutboxWorker(db, registry, make_settings(tmp_path, database_url))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(entered.wait(), 20)
    stop.set()
    await asyncio.sleep(0.05)
    assert not task.done()  # waits for the delivery
    release.set()
    await asyncio.wait_for(task, 20)
    assert (await get(db, job_id)).status == "done"


async def test_two_workers_deliver_every_job_exactly_once(tmp_path: Path, database_url: str) -> None:
    """Two workers, each with its own engine (as two processes would be), share one outbox."""
    calls: Counter[int] = Counter()

    async def handler(job: Job) -> None:
        calls[job.id] += 1
        await asyncio.sleep(0)

    registry = HandlerRegistry()
    registry.register(KIND, handler)
    settings = make_settings(tmp_path, database_url)
    setup = Database(database_url)
    ids = await enqueue(setup, *(NewJob(KIND, "p", {"n": i}, ordering_key=f"k{i % 7}") for i in range(150)))
    dbs = [Database(database_url), Database(database_url)]
    workers = [OutboxWorker(d, registry, settings, concurrency=8, batch_size=4) for d in dbs]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        async with asyncio.timeout(60):
            while True:
                async with setup.transaction() as conn:
                    if (await outbox.count_by_status(conn))["done"] == len(ids):
                        break
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for d in [*dbs, setup]:
            await d.dispose()
    assert set(calls) == set(ids)
    assert set(calls.values()) == {1}


async def test_retry_by_hand_restarts_the_horizon(db: Database, tmp_path: Path, database_url: str) -> None:
    start = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    clock = Clock(start)
    fail = True

    async def handler(job: Job) -> None:
        if fail:
            raise TransientDeliveryError("HTTP 500")

    registry = HandlerRegistry()
    registry.register(KIND, handler)
    settings = make_settings(tmp_path, database_url, DELIVERY_HORIZON_SECONDS=1.5)
    worker = OutboxWorker(db, registry, settings, rng=TopOfRange(), clock=clock)
    [job_id] = await enqueue(db, NewJob(KIND, "p", {}), now=start)
    statuses = []
    while (await get(db, job_id)).status != "dead":
        statuses += [o.status for o in await worker.run_once()]
        clock.now += timedelta(seconds=1)
    assert statuses == ["retry", "retry", "dead"]  # t=0, t=1, t=2 (past the 1.5 s horizon)
    clock.now += timedelta(days=3)
    async with db.transaction() as conn:
        await outbox.retry_dead(conn, job_id, now=clock.now)
    # a fresh horizon: the next failure is retried, not dead-lettered at once
    assert [o.status for o in await worker.run_once()] == ["retry"]
    fail = False
    clock.now += timedelta(seconds=1)
    assert [o.status for o in await worker.run_once()] == ["done"]
    record = await get(db, job_id)
    assert record.status == "done" and record.attempts == 5
    assert [a.outcome for a in record.attempt_log] == ["retry", "retry", "dead", "retry", "success"]


async def test_a_job_of_a_worker_that_died_is_delivered_by_another_after_the_lease(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    entered = asyncio.Event()
    seen: list[tuple[str, int, str]] = []

    async def hangs(job: Job) -> None:
        seen.append(("first", job.attempts, job.notification_id))
        entered.set()
        await asyncio.Event().wait()  # never returns: the worker dies with it

    async def works(job: Job) -> None:
        seen.append(("second", job.attempts, job.notification_id))

    settings = make_settings(tmp_path, database_url, DELIVERY_LEASE_SECONDS=60)
    first_registry, second_registry = HandlerRegistry(), HandlerRegistry()
    first_registry.register(KIND, hangs)
    second_registry.register(KIND, works)
    [job_id] = await enqueue(db, NewJob(KIND, "p", {}))
    dying = asyncio.create_task(
        OutboxWorker(db, first_registry, settings, worker_id="dying").run(asyncio.Event())
    )
    await asyncio.wait_for(entered.wait(), 20)
    dying.cancel()  # the process is gone; nothing is written
    with contextlib.suppress(asyncio.CancelledError):
        await dying

    heir = OutboxWorker(db, second_registry, settings, worker_id="heir")
    assert await heir.run_once() == []  # the lease still holds
    heir_late = OutboxWorker(
        db, second_registry, settings, worker_id="heir", clock=lambda: outbox.utcnow() + timedelta(seconds=61)
    )
    assert [o.status for o in await heir_late.run_once()] == ["done"]
    record = await get(db, job_id)
    assert [(a.worker, a.outcome) for a in record.attempt_log] == [
        ("dying", "lease-expired"),
        ("heir", "success"),
    ]
    assert [(who, n) for who, n, _ in seen] == [("first", 0), ("second", 1)]
    assert seen[0][2] == seen[1][2]  # the same notification id: the receiver can drop a duplicate


async def test_cancelling_a_stopping_worker_abandons_a_hung_delivery(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    """The app gives the worker a few seconds after stop, then cancels it: that must end it."""
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def hangs(job: Job) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    registry = HandlerRegistry()
    registry.register(KIND, hangs)
    [job_id] = await enqueue(db, NewJob(KIND, "p", {}))
    stop = asyncio.Event()
    task = asyncio.create_task(OutboxWorker(db, registry, make_settings(tmp_path, database_url)).run(stop))
    await asyncio.wait_for(entered.wait(), 20)
    stop.set()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), 0.2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 20)
    assert cancelled.is_set()
    assert (await get(db, job_id)).status == "running"  # left to its lease


# --- on_dead hooks: recorded, so that a crash cannot lose them ------------------------------


async def test_a_hook_cut_off_by_the_process_stopping_runs_once_on_a_later_worker(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    """The job is dead and the process stops inside its hook: the hook stays pending (visible), is
    left alone while the dying worker's lease holds, then another worker runs it exactly once."""
    entered = asyncio.Event()
    hook_runs: list[tuple[int, str]] = []

    async def refused(job: Job) -> None:
        raise PermanentDeliveryError("HTTP 410: the callback is gone", http_status=410)

    async def hangs(job: Job, reason: str) -> None:
        entered.set()
        await asyncio.Event().wait()  # the process dies here, before the hook did anything

    async def records(job: Job, reason: str) -> None:
        hook_runs.append((job.id, reason))

    settings = make_settings(tmp_path, database_url, DELIVERY_LEASE_SECONDS=60)
    dying_registry, later_registry = HandlerRegistry(), HandlerRegistry()
    dying_registry.register(KIND, refused, on_dead=hangs)
    later_registry.register(KIND, refused, on_dead=records)
    [job_id] = await enqueue(db, NewJob(KIND, "p", {}))
    dying = asyncio.create_task(
        OutboxWorker(db, dying_registry, settings, worker_id="dying").run(asyncio.Event())
    )
    await asyncio.wait_for(entered.wait(), 20)
    dying.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await dying

    record = await get(db, job_id)
    assert (record.status, record.dead_hook, record.claimed_by) == ("dead", "pending", "dying")
    assert record.last_error == "HTTP 410: the callback is gone"

    # a worker starting while the lease holds does not run it (the first may still be running it)
    assert await OutboxWorker(db, later_registry, settings, worker_id="early").run_once() == []
    assert hook_runs == []

    def late() -> datetime:
        return outbox.utcnow() + timedelta(seconds=61)

    restarted = OutboxWorker(db, later_registry, settings, worker_id="restarted", clock=late)
    assert await restarted.run_once() == []  # no delivery: only the hook ran
    assert hook_runs == [(job_id, "HTTP 410: the callback is gone")]
    record = await get(db, job_id)
    assert (record.status, record.dead_hook, record.claimed_by, record.lease_until) == (
        "dead",
        "done",
        None,
        None,
    )
    # never again: not by this worker, nor by another one starting later
    assert await restarted.drain() == []
    assert await OutboxWorker(db, later_registry, settings, clock=late).run_once() == []
    assert hook_runs == [(job_id, "HTTP 410: the callback is gone")]


async def test_a_failing_hook_stays_pending_and_runs_again_after_the_longest_backoff(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    start = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    clock = Clock(start)
    hook_calls: list[str] = []

    async def refused(job: Job) -> None:
        raise PermanentDeliveryError("HTTP 400: rejected")

    async def on_dead(job: Job, reason: str) -> None:
        hook_calls.append(reason)
        if len(hook_calls) == 1:
            raise RuntimeError("FHIR server unavailable")

    registry = HandlerRegistry()
    registry.register(KIND, refused, on_dead=on_dead)
    settings = make_settings(tmp_path, database_url, DELIVERY_MAX_BACKOFF_SECONDS=120)
    worker = OutboxWorker(db, registry, settings, clock=clock)
    [job_id] = await enqueue(db, NewJob(KIND, "p", {}), now=start)

    assert [o.status for o in await worker.run_once()] == ["dead"]
    record = await get(db, job_id)
    assert (record.dead_hook, record.dead_hook_error) == ("pending", "RuntimeError: FHIR server unavailable")
    assert record.claimed_by is None and record.lease_until == start + timedelta(seconds=120)

    clock.now = start + timedelta(seconds=119)
    assert await worker.run_once() == []
    assert len(hook_calls) == 1  # not before its time
    # due at 120 s; this worker's sweeps come every HOOK_SWEEP_SECONDS
    clock.now = start + timedelta(seconds=119 + HOOK_SWEEP_SECONDS)
    assert await worker.run_once() == []
    assert hook_calls == ["HTTP 400: rejected", "HTTP 400: rejected"]
    record = await get(db, job_id)
    assert (record.dead_hook, record.dead_hook_error) == ("done", None)
    clock.now = start + timedelta(seconds=1000)
    assert await worker.drain() == []
    assert len(hook_calls) == 2


async def test_a_dead_job_retried_by_hand_drops_its_pending_hook(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    """The hook records the dead-letter; a job given another chance (and delivered) needs none."""
    fail = True
    hook_calls: list[int] = []

    async def handler(job: Job) -> None:
        if fail:
            raise PermanentDeliveryError("refused")

    async def on_dead(job: Job, reason: str) -> None:
        hook_calls.append(job.id)
        raise RuntimeError("not now")

    registry = HandlerRegistry()
    registry.register(KIND, handler, on_dead=on_dead)
    clock = Clock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    worker = OutboxWorker(db, registry, make_settings(tmp_path, database_url), clock=clock)
    [job_id] = await enqueue(db, NewJob(KIND, "p", {}), now=clock.now)
    assert [o.status for o in await worker.run_once()] == ["dead"]
    assert (await get(db, job_id)).dead_hook == "pending"
    async with db.transaction() as conn:
        await outbox.retry_dead(conn, job_id, now=clock.now)
    fail = False
    clock.now += timedelta(days=1)
    assert [o.status for o in await worker.run_once()] == ["done"]
    record = await get(db, job_id)
    assert (record.status, record.dead_hook, record.dead_hook_error) == ("done", None, None)
    assert await worker.drain() == []
    assert hook_calls == [job_id]


async def test_a_kind_at_its_in_flight_limit_waits_in_the_database_while_other_kinds_run(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    limit = 2
    release = asyncio.Event()
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    done: list[str] = []
    progress = asyncio.Event()

    async def handler(job: Job) -> None:
        running[job.kind] += 1
        peak[job.kind] = max(peak[job.kind], running[job.kind])
        progress.set()
        if job.kind == "slow.peer":
            await release.wait()
        running[job.kind] -= 1
        done.append(job.kind)
        progress.set()

    registry = HandlerRegistry()
    registry.register("slow.peer", handler)
    registry.register(KIND, handler)
    registry.limit_in_flight("slow.peer", lambda: limit)
    settings = make_settings(tmp_path, database_url)
    worker = OutboxWorker(db, registry, settings, concurrency=16)
    slow = await enqueue(db, *[NewJob("slow.peer", "p", {"n": i}) for i in range(6)])
    await enqueue(db, *[NewJob(KIND, "q", {"n": i}) for i in range(4)])
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def until(condition: object) -> None:
        async with asyncio.timeout(20):
            while not condition():  # type: ignore[operator]
                progress.clear()
                await progress.wait()

    # the other kind is not starved by the slow one; the slow one holds only its limit
    await until(lambda: done.count(KIND) == 4 and running["slow.peer"] == limit)
    statuses = Counter([(await get(db, job_id)).status for job_id in slow])
    assert statuses == Counter({"running": limit, "pending": 6 - limit})
    release.set()
    await until(lambda: done.count("slow.peer") == 6)
    stop.set()
    await asyncio.wait_for(task, 20)
    assert peak["slow.peer"] == limit


async def test_a_peer_retry_after_delays_the_next_try_at_least_that_long(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    start = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    clock = Clock(start)

    async def handler(job: Job) -> None:
        raise TransientDeliveryError("HTTP 429 from peer", http_status=429, retry_after=45)

    registry = HandlerRegistry()
    registry.register(KIND, handler)
    settings = make_settings(
        tmp_path, database_url, DELIVERY_INITIAL_BACKOFF_SECONDS=1, DELIVERY_MAX_BACKOFF_SECONDS=8
    )
    worker = OutboxWorker(db, registry, settings, clock=clock)
    [job_id] = await enqueue(db, NewJob(KIND, "peer", {}), now=start)
    assert [o.status for o in await worker.run_once()] == ["retry"]
    waited = ((await get(db, job_id)).next_attempt_at - start).total_seconds()
    assert 45 <= waited <= 45 * 1.25  # what the peer asked (jittered up), beyond our own backoff


async def test_a_job_due_later_waits_until_then_and_counts_its_horizon_from_then(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    start = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    due = start + timedelta(days=8)
    clock = Clock(start)
    seen: list[int] = []

    async def handler(job: Job) -> None:
        seen.append(job.id)

    registry = HandlerRegistry()
    registry.register(KIND, handler)
    worker = OutboxWorker(db, registry, make_settings(tmp_path, database_url), clock=clock)
    later, now = await enqueue(db, NewJob(KIND, "p", {}, due=due), NewJob(KIND, "p", {}), now=start)
    assert [o.job_id for o in await worker.drain()] == [now]
    record = await get(db, later)
    assert record.status == "pending" and record.next_attempt_at == due and record.horizon_from == due
    clock.now = due
    assert [o.job_id for o in await worker.drain()] == [later]


async def test_attempts_finishing_together_are_recorded_together_and_a_failure_among_them_retried_alone(
    db: Database, tmp_path: Path, database_url: str
) -> None:
    """A wave of callbacks answered together (one receiver, one claimed batch) is recorded in one
    write: each attempt once, at one instant; the one that failed is tried again, alone."""
    started: asyncio.Queue[int] = asyncio.Queue()
    release = asyncio.Event()
    tries: Counter[int] = Counter()

    async def handler(job: Job) -> DeliveryReceipt:
        n = int(job.payload["n"])
        tries[n] += 1
        if tries[n] > 1:
            return DeliveryReceipt(http_status=200)
        await started.put(n)
        await release.wait()
        for _ in range(n * 3):  # each answer comes in a later turn of the loop than the one before
            await asyncio.sleep(0)
        if n == 2:
            raise TransientDeliveryError("HTTP 503", http_status=503)
        return DeliveryReceipt(http_status=200)

    registry = HandlerRegistry()
    registry.register(KIND, handler)
    settings = make_settings(tmp_path, database_url, DELIVERY_INITIAL_BACKOFF_SECONDS=0.05)
    ids = await enqueue(db, *(NewJob(KIND, "peer", {"n": n}, ordering_key=f"k{n}") for n in range(5)))
    worker = OutboxWorker(db, registry, settings, finish_linger=5.0)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(20):
            for _ in ids:
                await started.get()
            release.set()
            while (await get(db, ids[2])).status != "done":  # noqa: ASYNC110 (another task's database writes)
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)
    records = [await get(db, job_id) for job_id in ids]
    assert [r.status for r in records] == ["done"] * 5
    firsts = [r.attempt_log[0] for r in records]
    assert [a.outcome for a in firsts] == ["success", "success", "retry", "success", "success"]
    assert len({a.finished_at for a in firsts}) == 1  # one write recorded the whole wave
    assert [len(r.attempt_log) for r in records] == [1, 1, 2, 1, 1]
    assert dict(tries) == {0: 1, 1: 1, 2: 2, 3: 1, 4: 1}
