"""delivery: a job an administrator discarded has its own status; jobs are found by ordering key

``discarded``: a dead or failing job a person gave up on, with the reason in ``last_error``; the
worker never takes it again and Retry refuses it (unlike ``dead``, it is not waiting for anyone).
The index on (ordering_key, id) serves a follow-up's page, which looks its jobs up by ordering key
whatever their status (the partial ``ix_outbox_jobs_active_key`` only covers waiting jobs): a scan
of the outbox before (~40 ms at 300,000 jobs on SQLite), an index look-up after.

Revision ID: delivery_0003
Revises: delivery_0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "delivery_0003"
down_revision: str | None = "delivery_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = "status IN ('pending', 'running', 'done', 'dead')"
AFTER = "status IN ('pending', 'running', 'done', 'dead', 'discarded')"


# delivery_0001 named the CHECK through the naming convention twice; it gets its declared name now
OLD_NAME = "ck_outbox_jobs_ck_outbox_jobs_status"
NAME = "ck_outbox_jobs_status"


def _check(drop: str, create: str, condition: str) -> None:
    # SQLite cannot alter a CHECK: the batch rebuilds the table (its partial indexes are reflected
    # with their WHERE and made again); PostgreSQL drops and adds the constraint in place
    with op.batch_alter_table("outbox_jobs") as batch:
        batch.drop_constraint(op.f(drop), type_="check")
        batch.create_check_constraint(op.f(create), condition)


def upgrade() -> None:
    _check(OLD_NAME, NAME, AFTER)
    op.create_index("ix_outbox_jobs_ordering_key_id", "outbox_jobs", ["ordering_key", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_jobs_ordering_key_id", table_name="outbox_jobs")
    op.execute("UPDATE outbox_jobs SET status = 'dead' WHERE status = 'discarded'")
    _check(NAME, OLD_NAME, BEFORE)
