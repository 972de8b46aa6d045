"""FHIR store: resources, versions, search index tables, subscription criteria index.

Revision ID: fhir_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "fhir_0001"
down_revision = None
branch_labels = ("fhir",)
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE fhir_resource_seq")
    op.create_table(
        "fhir_counter",
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_fhir_counter"),
    )
    op.create_table(
        "fhir_resource",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("res_type", "res_id", name="pk_fhir_resource"),
    )
    op.create_index("ix_fhir_resource_type_seq", "fhir_resource", ["res_type", "seq"])
    op.create_index("ix_fhir_resource_type_updated", "fhir_resource", ["res_type", "last_updated"])
    op.create_table(
        "fhir_version",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("res_type", "res_id", "version_id", name="pk_fhir_version"),
    )
    op.create_table(
        "fhir_token",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.String(255), nullable=True),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_fhir_token_lookup", "fhir_token", ["res_type", "param", "value"])
    op.create_index("ix_fhir_token_res", "fhir_token", ["res_type", "res_id"])
    op.create_table(
        "fhir_reference",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(64), nullable=True),
        sa.Column("target_id", sa.String(64), nullable=True),
        sa.Column("target_url", sa.String(1024), nullable=True),
        sa.Column("res_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_fhir_reference_lookup", "fhir_reference", ["res_type", "param", "target_id"])
    op.create_index("ix_fhir_reference_res", "fhir_reference", ["res_type", "res_id"])
    op.create_index("ix_fhir_reference_target", "fhir_reference", ["target_type", "target_id"])
    op.create_table(
        "fhir_string",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("value", sa.String(512), nullable=False),
        sa.Column("norm", sa.String(512), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_fhir_string_lookup", "fhir_string", ["res_type", "param", "norm"])
    op.create_index("ix_fhir_string_res", "fhir_string", ["res_type", "res_id"])
    op.create_table(
        "fhir_date",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("low", sa.BigInteger(), nullable=False),
        sa.Column("high", sa.BigInteger(), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_fhir_date_lookup", "fhir_date", ["res_type", "param", "low"])
    op.create_index("ix_fhir_date_res", "fhir_date", ["res_type", "res_id"])
    op.create_table(
        "fhir_subscription",
        sa.Column("sub_id", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("criteria", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.String(1024), nullable=False),
        sa.Column("indexed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("sub_id", name="pk_fhir_subscription"),
    )
    op.create_index("ix_fhir_subscription_unindexed", "fhir_subscription", ["indexed", "resource_type"])
    op.create_table(
        "fhir_subscription_token",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.String(255), nullable=True),
        sa.Column("value", sa.String(1024), nullable=False),
        sa.Column("sub_id", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_fhir_subscription_token_lookup", "fhir_subscription_token", ["resource_type", "value"]
    )
    op.create_index("ix_fhir_subscription_token_sub", "fhir_subscription_token", ["sub_id"])


def downgrade() -> None:
    for name in (
        "fhir_subscription_token",
        "fhir_subscription",
        "fhir_date",
        "fhir_string",
        "fhir_reference",
        "fhir_token",
        "fhir_version",
        "fhir_resource",
        "fhir_counter",
    ):
        op.drop_table(name)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE fhir_resource_seq")
