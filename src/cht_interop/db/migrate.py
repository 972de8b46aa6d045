"""Apply Alembic migrations (every domain branch: ``upgrade heads``).

Alembic is imported only when migrations run: with what it brings (Mako, Pygments' lexers) it
is ~10 MiB of a process's resident set for good. The long-running servers (``up``, ``serve``, the
worker) migrate in a child interpreter (:func:`migrate_apart`), so none of it is ever in them.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cht_interop.db.engine import sqlite_file, sync_url
from cht_interop.db.errors import is_database_busy, startup_retry_delays

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    cfg.attributes["sqlalchemy_url"] = sync_url(url)
    return cfg


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema of every domain (sync; call before serving)."""
    from alembic import command

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


# The child's program: the URL comes on its stdin (a PostgreSQL URL may hold a password, which a
# command line would show to every user of the machine)
_CHILD = "import sys; from cht_interop.db.migrate import migrate; migrate(sys.stdin.read())"


def migrate_apart(url: str) -> None:
    """:func:`migrate` in a child interpreter (same environment, same stderr), for a process that
    then serves for long: Alembic's modules stay out of it. A failed migration has printed why
    (the child's traceback); this process then exits with the child's status."""
    done = subprocess.run([sys.executable, "-c", _CHILD], input=url, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.returncode)
