"""Every domain's Alembic branch builds exactly the tables its ``tables.py`` declares."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import cht_interop.tables  # noqa: F401  (every domain's tables on the metadata)
from cht_interop.db import metadata, migrate, sync_url
from cht_interop.db.migrate import alembic_config, migrate_apart
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


_SERVER_IMPORTS = """
import sys
import cht_interop.app, cht_interop.cli, cht_interop.runner, cht_interop.sandbox.runner
from cht_interop.db.migrate import alembic_config, migrate_apart
loaded = "alembic" in sys.modules
migrate_apart(sys.argv[1])
print(loaded, "alembic" in sys.modules)
"""


def test_the_servers_migrate_in_a_child_without_alembic_in_their_process(tmp_path: Path) -> None:
    """~10 MiB of Alembic, Mako and Pygments' lexers never in ``up``, ``serve`` or the worker."""
    apart = tmp_path / "apart.sqlite3"
    done = subprocess.run(
        [sys.executable, "-c", _SERVER_IMPORTS, f"sqlite+aiosqlite:///{apart}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["False", "False"]
    here = tmp_path / "here.sqlite3"
    migrate(f"sqlite+aiosqlite:///{here}")
    assert _versions(apart) == _versions(here) != []


def test_a_failed_migration_apart_exits_with_the_childs_status(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(SystemExit) as exited:
        migrate_apart(f"sqlite+aiosqlite:///{tmp_path / 'not-a-dir' / 'db.sqlite3'}")
    assert exited.value.code == 1


def _versions(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(row[0] for row in conn.execute("SELECT version_num FROM alembic_version"))


def test_a_downgrade_keeps_a_list_not_closed_yet(tmp_path: Path) -> None:
    """Its turns may have accepted follow-ups (their keys answer others): ``ltfu_0003``'s downgrade
    keeps the list, its entries and keys, counted from its rows as its close would."""
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    migrate(url)
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        db.execute(
            "INSERT INTO ltfu_list (id, received_at, entry_count, staged_count, staging) "
            "VALUES ('list-1', '2026-12-07T12:00:00+00:00', 3, 0, 1)"
        )
        db.executemany(
            "INSERT INTO ltfu_list_entry (list_id, position, state, follow_up_id) VALUES ('list-1', ?, ?, ?)",
            [(0, "staged", "fu-0"), (1, "done", None)],
        )
        db.execute("INSERT INTO ltfu_staged_key (key, follow_up_id, list_id) VALUES ('k', 'fu-0', 'list-1')")

    command.downgrade(alembic_config(url), "ltfu_0002")

    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        assert db.execute("SELECT id, entry_count, staged_count FROM ltfu_list").fetchall() == [
            ("list-1", 2, 1)
        ]
        assert db.execute("SELECT count(*) FROM ltfu_staged_key").fetchone() == (1,)
