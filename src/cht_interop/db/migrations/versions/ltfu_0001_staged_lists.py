"""ltfu: LTFU lists staged for background writing, and their duplicate keys

Revision ID: ltfu_0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ltfu_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("ltfu",)
depends_on: str | Sequence[str] | None = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ltfu_list",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("received_at", Ts, nullable=False),
        sa.Column("entry_count", sa.Integer(), nullable=False),
        sa.Column("staged_count", sa.Integer(), nullable=False),
        sa.Column("done_at", Ts, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ltfu_list"),
    )
    op.create_table(
        "ltfu_list_entry",
        sa.Column("list_id", sa.String(36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("follow_up_id", sa.String(64), nullable=True),
        sa.Column("request", sa.Text(), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("list_id", "position", name="pk_ltfu_list_entry"),
        sa.ForeignKeyConstraint(
            ["list_id"], ["ltfu_list.id"], ondelete="CASCADE", name="fk_ltfu_list_entry_list_id_ltfu_list"
        ),
    )
    op.create_index("ix_ltfu_list_entry_staged", "ltfu_list_entry", ["list_id", "state"])
    op.create_table(
        "ltfu_staged_key",
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("follow_up_id", sa.String(64), nullable=False),
        sa.Column("list_id", sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_ltfu_staged_key"),
    )
    op.create_index("ix_ltfu_staged_key_follow_up", "ltfu_staged_key", ["follow_up_id"])


def downgrade() -> None:
    op.drop_table("ltfu_staged_key")
    op.drop_table("ltfu_list_entry")
    op.drop_table("ltfu_list")
