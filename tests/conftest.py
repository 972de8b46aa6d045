"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, settings, live servers."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text

import cht_interop.tables  # noqa: F401  (every table on the metadata)
from cht_interop.db import Database, metadata, migrate, sync_url
from cht_interop.settings import Settings

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's environment or .env for our settings."""
    for name in list(os.environ):
        if name.startswith(("CHT_", "FHIR_", "OPENHIM_", "INTEROP_", "DATABASE_URL", "DATA_DIR")):
            monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating each time would be slow)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    name = f"cht_interop_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    yield url
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate_pg(url: str) -> None:
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    if not tables:
        return
    engine = create_engine(sync_url(url))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """The URL of an empty, migrated database: one run per backend."""
    if request.param == "sqlite":
        target = tmp_path / "db.sqlite3"
        shutil.copy(sqlite_template, target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("pg_url")
    _truncate_pg(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only, for tests whose subject is not the database."""
    target = tmp_path / "db.sqlite3"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings for a test: its own data dir and database, a known client password."""
    values: dict[str, Any] = {
        "DATA_DIR": tmp_path / "data",
        "DATABASE_URL": database_url,
        "INTEROP_CLIENT_PASSWORD": "test-password",
        "DELIVERY_POLL_SECONDS": 0.05,
        "DELIVERY_INITIAL_BACKOFF_SECONDS": 0.05,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


CLIENT_AUTH = ("interop-client", "test-password")
