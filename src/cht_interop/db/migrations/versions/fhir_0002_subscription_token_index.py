"""FHIR store: the Subscription criteria index is keyed on the value first.

With (resource_type, value), PostgreSQL with fresh statistics scanned every token row of the type.

Revision ID: fhir_0002
Revises: fhir_0001
"""

from __future__ import annotations

from alembic import op

revision = "fhir_0002"
down_revision = "fhir_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_fhir_subscription_token_lookup", table_name="fhir_subscription_token")
    op.create_index("ix_fhir_subscription_token_value", "fhir_subscription_token", ["value", "resource_type"])


def downgrade() -> None:
    op.drop_index("ix_fhir_subscription_token_value", table_name="fhir_subscription_token")
    op.create_index(
        "ix_fhir_subscription_token_lookup", "fhir_subscription_token", ["resource_type", "value"]
    )
