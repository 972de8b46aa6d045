"""journal: the transaction log's rows and their references

Revision ID: journal_0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "journal_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("journal",)
depends_on: str | Sequence[str] | None = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "journal_entries",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("started_at", Ts, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("client", sa.String(100), nullable=True),
        sa.Column("method", sa.String(16), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("query", sa.Text(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("request_body", sa.Text(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("orchestrations", sa.JSON(), nullable=False),
        sa.Column("follow_up_id", sa.String(64), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("target", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_journal_entries"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_journal_entries_started", "journal_entries", ["started_at", "id"])
    op.create_index("ix_journal_entries_transaction", "journal_entries", ["transaction_id"])
    op.create_table(
        "journal_refs",
        sa.Column("ref", sa.String(200), nullable=False),
        sa.Column("entry_id", sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint("ref", "entry_id", name="pk_journal_refs"),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["journal_entries.id"],
            ondelete="CASCADE",
            name="fk_journal_refs_entry_id_journal_entries",
        ),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_journal_refs_entry", "journal_refs", ["entry_id"])


def downgrade() -> None:
    op.drop_table("journal_refs")
    op.drop_table("journal_entries")
