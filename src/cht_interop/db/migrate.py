"""Apply Alembic migrations (every domain branch: ``upgrade heads``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from alembic import command
from alembic.config import Config

from cht_interop.db.engine import sqlite_file, sync_url
from cht_interop.db.errors import is_database_busy, startup_retry_delays

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    cfg.attributes["sqlalchemy_url"] = sync_url(url)
    return cfg


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema of every domain (sync; call before serving)."""
    database = sqlite_file(url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    delays = startup_retry_delays()
    while True:
        try:
            command.upgrade(alembic_config(url), "heads")
            return
        except Exception as exc:
            delay = next(delays, None)
            if not is_database_busy(exc) or delay is None:
                raise
            log.warning("the database cannot answer yet (%s); trying again in %.1f s", exc, delay)
            time.sleep(delay)
