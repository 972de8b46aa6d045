"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, settings, live servers; and
the guard that keeps every test inside the repository and on loopback."""

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
from tests.support.self_contained import Guard, default_guard

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

# Installed when the suite starts, for the whole process: a test that opens a file beside the
# repository or in home, or connects beyond loopback, fails (tests/support/self_contained.py).
GUARD: Guard = default_guard(Path(__file__).parent.parent)
GUARD.install()


@pytest.fixture(scope="session", autouse=True)
def _guard_knows_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``--basetemp`` may put the tmp_path folders anywhere: they are the tests' own."""
    GUARD.allow(tmp_path_factory.getbasetemp())


@pytest.fixture(autouse=True)
def _self_contained(_guard_knows_basetemp: None) -> Iterator[None]:
    """Fails the test that left the repository, even if the code under test caught the error."""
    start = GUARD.mark()
    yield
    refused = GUARD.consume(start)
    if refused:
        pytest.fail(
            "left the repository (a clone must pass with nothing beside it):\n  " + "\n  ".join(refused),
            pytrace=False,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Refusals outside any test (collection, module or session fixtures) fail the run too."""
    if GUARD.violations:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("left the repository outside a test:", red=True)
            for refused in GUARD.violations:
                reporter.write_line(f"  {refused}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


def truncate_pg(url: str) -> None:
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
    truncate_pg(url)
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
