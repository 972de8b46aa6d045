"""Database access shared by every domain: one engine, one transaction boundary, Alembic migrations.

Domains define their tables on :data:`metadata` (``cht_interop.db.metadata``) in their own
``tables.py`` and own a migration branch in ``db/migrations/versions/`` named after the domain.
SQLite/PostgreSQL differences stay inside this package.

Tuning devices, each in ``engine.py``: SQLite's WAL, synchronous, the checkpoints' backstop (the
checkpoints themselves run in a thread: ``checkpoints.py``), page cache
per connection under one process-wide budget (``soft_heap_limit``), no mmap, the busy timeout
(PostgreSQL: the lock timeout), both ``DB_BUSY_TIMEOUT_SECONDS``. Which errors mean "busy, retry"
(answered 503): ``errors.py``.
"""

from cht_interop.db.engine import Database, normalise_url, sync_url
from cht_interop.db.meta import metadata
from cht_interop.db.migrate import migrate

__all__ = ["Database", "metadata", "migrate", "normalise_url", "sync_url"]
