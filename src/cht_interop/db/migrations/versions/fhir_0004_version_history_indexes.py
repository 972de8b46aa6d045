"""FHIR store: indexes for the type and system history (newest version first).

``GET [base]/_history`` and ``GET [type]/_history`` page the version table by
(last_updated, res_type, res_id, version_id), newest first; without these each page sorted the
whole table (or the whole type). An instance's history keeps using the primary key.

Revision ID: fhir_0004
Revises: fhir_0003
"""

from __future__ import annotations

from alembic import op

revision = "fhir_0004"
down_revision = "fhir_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_fhir_version_updated", "fhir_version", ["last_updated", "res_type", "res_id", "version_id"]
    )
    op.create_index(
        "ix_fhir_version_type_updated", "fhir_version", ["res_type", "last_updated", "res_id", "version_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_fhir_version_type_updated", table_name="fhir_version")
    op.drop_index("ix_fhir_version_updated", table_name="fhir_version")
