"""Alembic environment: sync engine, URL handed in by ``cht_interop.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

import cht_interop.tables  # noqa: F401  (registers every domain's tables on the metadata)
from cht_interop.db.meta import metadata

config = context.config
url: str = config.attributes.get("sqlalchemy_url") or config.get_main_option("sqlalchemy.url") or ""


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # replicas starting together (serve, worker, several pods) migrate one at a time:
                # the next one waits here, then finds the schema current (DDL is transactional)
                connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('cht-interop:migrate'))"))
            context.run_migrations()
    engine.dispose()


run_migrations_online()
