"""Alembic environment: sync engine, URL handed in by ``cht_interop.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

import cht_interop.tables  # noqa: F401  (registers every domain's tables on the metadata)
from cht_interop.db.meta import metadata

config = context.config
url: str = config.attributes.get("sqlalchemy_url") or config.get_main_option("sqlalchemy.url") or ""


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
