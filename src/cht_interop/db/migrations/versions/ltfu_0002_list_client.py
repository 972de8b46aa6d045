"""ltfu: the API client that sent a staged LTFU list (only it, or an admin, reads its status)

Revision ID: ltfu_0002
Revises: ltfu_0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ltfu_0002"
down_revision: str | None = "ltfu_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ltfu_list") as batch:
        batch.add_column(sa.Column("client_id", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ltfu_list") as batch:
        batch.drop_column("client_id")
