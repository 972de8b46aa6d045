"""ltfu: a long list is staged a turn at a time; ``staging`` marks one not closed yet

Revision ID: ltfu_0003
Revises: ltfu_0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ltfu_0003"
down_revision: str | None = "ltfu_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ltfu_list") as batch:
        batch.add_column(sa.Column("staging", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    # A list not closed yet may hold follow-ups already accepted (its turns' keys count, and may
    # have answered other requests): kept, counted from its rows as its close would.
    entries = "SELECT {} FROM ltfu_list_entry e WHERE e.list_id = ltfu_list.id"
    op.execute(
        sa.text(
            f"UPDATE ltfu_list SET entry_count = ({entries.format('count(*)')}), "
            f"staged_count = ({entries.format('count(e.follow_up_id)')}) WHERE staging"
        )
    )
    with op.batch_alter_table("ltfu_list") as batch:
        batch.drop_column("staging")
