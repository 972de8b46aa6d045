"""FHIR store: the "always check" Subscriptions get a table of their own.

With fresh statistics, SQLite answered ``indexed = false AND resource_type IN (…)`` on
``fhir_subscription`` with a full scan (every row has the same ``indexed``), so write cost grew with
the number of active Subscriptions.

Revision ID: fhir_0003
Revises: fhir_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "fhir_0003"
down_revision = "fhir_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fhir_subscription_unindexed",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("sub_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "sub_id", name="pk_fhir_subscription_unindexed"),
    )
    op.execute(
        "INSERT INTO fhir_subscription_unindexed (resource_type, sub_id) "
        "SELECT resource_type, sub_id FROM fhir_subscription WHERE NOT indexed"
    )
    op.drop_index("ix_fhir_subscription_unindexed", table_name="fhir_subscription")


def downgrade() -> None:
    op.create_index("ix_fhir_subscription_unindexed", "fhir_subscription", ["indexed", "resource_type"])
    op.drop_table("fhir_subscription_unindexed")
