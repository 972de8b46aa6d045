"""Cross-process mutual exclusion on PostgreSQL: transaction-scoped advisory locks.

SQLite needs none: its write transactions are serial, and the embedded default runs one serving
process by design. Each lock is named by text, hashed by PostgreSQL to the lock's 32-bit key.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:name))")


async def advisory_xact_lock(conn: AsyncConnection, name: str) -> None:
    """Wait until no other transaction holds the lock ``name``; it is released at commit/rollback.

    Call on PostgreSQL connections only (the callers know their backend: ``Database.is_postgresql``).
    """
    await conn.execute(_LOCK, {"name": name})
