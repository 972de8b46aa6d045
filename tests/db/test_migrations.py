"""Every domain's Alembic branch builds exactly the tables its ``tables.py`` declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import cht_interop.tables  # noqa: F401  (every domain's tables on the metadata)
from cht_interop.db import metadata, sync_url


def test_migrated_database_equals_the_declared_tables(database_url: str) -> None:
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "include_name": lambda name, kind, _parent: kind != "table" or name != "alembic_version",
                },
            )
            diff = compare_metadata(ctx, metadata)
    finally:
        engine.dispose()
    assert diff == []
    names = set(metadata.tables)
    # every domain is on the metadata compared (a domain missing from cht_interop.tables would
    # make its tables silently unchecked)
    assert {"fhir_resource", "fhir_subscription_unindexed", "outbox_jobs", "outbox_attempts"} <= names
    assert {"ltfu_list", "ltfu_list_entry", "ltfu_staged_key"} <= names
