"""ltfu: a long list is staged in slices; ``staging`` marks one whose last slice is not committed yet

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
    # a list whose staging never finished was never answered: it goes with the column
    unfinished = "SELECT id FROM ltfu_list WHERE staging"
    op.execute(sa.text(f"DELETE FROM ltfu_staged_key WHERE list_id IN ({unfinished})"))
    op.execute(sa.text(f"DELETE FROM ltfu_list_entry WHERE list_id IN ({unfinished})"))
    op.execute(sa.text("DELETE FROM ltfu_list WHERE staging"))
    with op.batch_alter_table("ltfu_list") as batch:
        batch.drop_column("staging")
