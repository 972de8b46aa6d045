"""delivery: a dead job's on_dead hook is recorded (pending → done), so a crash cannot lose it

Before, the worker marked a job dead and then ran its kind's ``on_dead`` hook separately; a process
stopping in between lost the hook for good (the follow-up Task stayed open, the Subscription
active). Dead jobs of this era whose hook may not have run cannot be told apart, so they stay NULL.

Revision ID: delivery_0002
Revises: delivery_0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "delivery_0002"
down_revision: str | None = "delivery_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox_jobs", sa.Column("dead_hook", sa.String(16), nullable=True))
    op.add_column("outbox_jobs", sa.Column("dead_hook_error", sa.Text(), nullable=True))
    op.create_index(
        "ix_outbox_jobs_hook_pending",
        "outbox_jobs",
        ["id"],
        postgresql_where=sa.text("dead_hook = 'pending'"),
        sqlite_where=sa.text("dead_hook = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_jobs_hook_pending", table_name="outbox_jobs")
    # plain DROP COLUMN (SQLite >= 3.35): a batch table rebuild could lose the partial indexes
    op.execute("ALTER TABLE outbox_jobs DROP COLUMN dead_hook_error")
    op.execute("ALTER TABLE outbox_jobs DROP COLUMN dead_hook")
