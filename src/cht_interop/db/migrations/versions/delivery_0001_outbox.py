"""delivery: outbox jobs and their attempts

Revision ID: delivery_0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "delivery_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("delivery",)
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbox_jobs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("notification_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("ordering_key", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", Ts, nullable=False),
        sa.Column("lease_until", Ts, nullable=True),
        sa.Column("claimed_by", sa.String(100), nullable=True),
        sa.Column("horizon_from", Ts, nullable=False),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("updated_at", Ts, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_jobs"),
        sa.UniqueConstraint("notification_id", name="uq_outbox_jobs_notification_id"),
        sa.CheckConstraint("status IN ('pending', 'running', 'done', 'dead')", name="ck_outbox_jobs_status"),
    )
    op.create_index(
        "ix_outbox_jobs_due",
        "outbox_jobs",
        ["next_attempt_at", "id"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_outbox_jobs_lease",
        "outbox_jobs",
        ["lease_until"],
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "ix_outbox_jobs_active_key",
        "outbox_jobs",
        ["ordering_key", "id"],
        postgresql_where=sa.text("status IN ('pending', 'running')"),
        sqlite_where=sa.text("status IN ('pending', 'running')"),
    )
    op.create_index("ix_outbox_jobs_status_id", "outbox_jobs", ["status", "id"])

    op.create_table(
        "outbox_attempts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job_id", Id, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(100), nullable=False),
        sa.Column("started_at", Ts, nullable=False),
        sa.Column("finished_at", Ts, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_attempts"),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["outbox_jobs.id"],
            name="fk_outbox_attempts_job_id_outbox_jobs",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("job_id", "number", name="uq_outbox_attempts_job_id_number"),
    )


def downgrade() -> None:
    op.drop_table("outbox_attempts")
    op.drop_index("ix_outbox_jobs_status_id", table_name="outbox_jobs")
    op.drop_index("ix_outbox_jobs_active_key", table_name="outbox_jobs")
    op.drop_index("ix_outbox_jobs_lease", table_name="outbox_jobs")
    op.drop_index("ix_outbox_jobs_due", table_name="outbox_jobs")
    op.drop_table("outbox_jobs")
