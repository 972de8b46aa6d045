"""Every domain's Alembic branch builds exactly the tables its ``tables.py`` declares."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import cht_interop.tables  # noqa: F401  (every domain's tables on the metadata)
from cht_interop.db import metadata, sync_url
from tests.conftest import PG_ADMIN_DSN


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


@pytest.mark.postgres
def test_replicas_starting_together_migrate_one_at_a_time(tmp_path: Path) -> None:
    """Three processes migrate one fresh PostgreSQL database at once (pods starting together):
    each exits cleanly, and the schema is the declared one (without the migration lock, the
    losers of the race failed with 'relation already exists')."""
    name = f"cht_interop_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    try:
        env = {**os.environ, "DATABASE_URL": url}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "cht_interop", "migrate", "--data-dir", str(tmp_path / str(n))],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for n in range(3)
        ]
        outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outputs
        test_migrated_database_equals_the_declared_tables(url)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
