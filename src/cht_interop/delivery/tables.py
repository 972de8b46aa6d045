"""Outbox tables: one row per job, one row per delivery attempt.

The claim query needs (a) pending jobs that are due and (b) running jobs whose lease ran out, and
checks per ``ordering_key`` that no older job is still active; each has a partial index so the
cost stays flat however many finished jobs pile up.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from cht_interop.db.meta import metadata
from cht_interop.db.types import UtcDateTime

# discarded: given up by a person (``outbox.discard``), never taken again (delivery_0003)
JOB_STATUSES = ("pending", "running", "done", "dead", "discarded")
# a dead job's ``on_dead`` hook: NULL when its kind has none, else pending until it has run, then done
HOOK_STATUSES = ("pending", "done")
ATTEMPT_OUTCOMES = ("success", "retry", "dead", "lease-expired")

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
Id = BigInteger().with_variant(Integer(), "sqlite")


outbox_jobs = Table(
    "outbox_jobs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # stable per job, sent as X-Notification-Id on every attempt so receivers can drop duplicates
    Column("notification_id", String(36), nullable=False, unique=True),
    Column("kind", String(100), nullable=False),
    Column("target", Text, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("ordering_key", String(255), nullable=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("lease_until", UtcDateTime, nullable=True),
    Column("claimed_by", String(100), nullable=True),
    # start of the retry horizon: creation, or the moment someone retried a dead job by hand
    Column("horizon_from", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("last_error", Text, nullable=True),
    # The on_dead hook is marked pending in the same write that makes the job dead, and done only
    # after it ran, so a process stopping in between cannot lose it. While it is pending,
    # ``claimed_by``/``lease_until`` say which worker runs it and until when the others leave it
    # alone (after a failure: when it is tried again).
    Column("dead_hook", String(16), nullable=True),
    Column("dead_hook_error", Text, nullable=True),
    CheckConstraint("status IN ('pending', 'running', 'done', 'dead', 'discarded')", name="status"),
    Index(
        "ix_outbox_jobs_due",
        "next_attempt_at",
        "id",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    Index(
        "ix_outbox_jobs_lease",
        "lease_until",
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    Index(
        "ix_outbox_jobs_active_key",
        "ordering_key",
        "id",
        postgresql_where=text("status IN ('pending', 'running')"),
        sqlite_where=text("status IN ('pending', 'running')"),
    ),
    Index("ix_outbox_jobs_status_id", "status", "id"),
    # a follow-up's jobs by ordering key, whatever their status (the console's follow-up page)
    Index("ix_outbox_jobs_ordering_key_id", "ordering_key", "id"),
    Index(
        "ix_outbox_jobs_hook_pending",
        "id",
        postgresql_where=text("dead_hook = 'pending'"),
        sqlite_where=text("dead_hook = 'pending'"),
    ),
)

outbox_attempts = Table(
    "outbox_attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", Id, ForeignKey("outbox_jobs.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("worker", String(100), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("outcome", String(16), nullable=True),  # NULL while running; one of ATTEMPT_OUTCOMES
    Column("http_status", Integer, nullable=True),
    Column("error", Text, nullable=True),  # cut to ~2 kB, never headers or credentials
    Column("note", Text, nullable=True),  # what the handler reported on success, cut likewise
    UniqueConstraint("job_id", "number", name="uq_outbox_attempts_job_id_number"),
)
