"""Cross-process mutual exclusion on PostgreSQL: transaction-scoped and session advisory locks.

SQLite needs none: its write transactions are serial, and the embedded default runs one serving
process by design. Each lock is named by text, hashed by PostgreSQL to the lock's 32-bit key.
"""

from __future__ import annotations

import contextlib

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:name))")
_LOCK_SHARED = text("SELECT pg_advisory_xact_lock_shared(hashtext(:name))")
# Many keys in one round trip, always taken in the same (sorted) order so that two transactions
# wanting overlapping keys queue instead of deadlocking. The two-int form keeps keyed locks in a
# space of their own (``space``), apart from the named locks above.
_LOCK_KEYS = text(
    "SELECT count(pg_advisory_xact_lock(:space, k)) FROM "
    "(SELECT DISTINCT hashtext(key) AS k FROM unnest(CAST(:keys AS text[])) AS key ORDER BY k) AS keys"
)
# The named locks of ``advisory_xact_lock`` (same keys), many in one round trip, in key order.
_LOCK_NAMED = text(
    "SELECT count(pg_advisory_xact_lock(k)) FROM "
    "(SELECT DISTINCT hashtext(name) AS k FROM unnest(CAST(:names AS text[])) AS name ORDER BY k) AS keys"
)
_TRY = text("SELECT pg_try_advisory_xact_lock(hashtext(:name))")
_TRY_SESSION = text("SELECT pg_try_advisory_lock(hashtext(:name))")
_UNLOCK_SESSION = text("SELECT pg_advisory_unlock(hashtext(:name))")


async def advisory_xact_lock(conn: AsyncConnection, name: str) -> None:
    """Wait until no other transaction holds the lock ``name``; it is released at commit/rollback.

    Call on PostgreSQL connections only (the callers know their backend: ``Database.is_postgresql``).
    """
    await conn.execute(_LOCK, {"name": name})


async def try_advisory_xact_lock(conn: AsyncConnection, name: str) -> bool:
    """Take the lock ``name`` if nobody holds it (True; released at commit/rollback), else False
    at once: e.g. to tell whether the process holding a ``SessionLock`` of that name is gone."""
    return bool(await conn.scalar(_TRY, {"name": name}))


async def advisory_xact_lock_all(conn: AsyncConnection, names: list[str]) -> None:
    """``advisory_xact_lock`` on every name, in one round trip and in one (sorted) order, so that
    two transactions wanting overlapping names queue instead of deadlocking."""
    if names:
        await conn.execute(_LOCK_NAMED, {"names": names})


async def advisory_xact_lock_shared(conn: AsyncConnection, name: str) -> None:
    """Share the lock ``name`` with other sharers; wait while a transaction holds it exclusively."""
    await conn.execute(_LOCK_SHARED, {"name": name})


async def advisory_xact_locks(conn: AsyncConnection, space: int, keys: list[str]) -> None:
    """Wait until this transaction holds every key (exclusively), released at commit/rollback.

    Each key costs a slot of PostgreSQL's shared lock table (``max_locks_per_transaction`` x
    connections in all): callers keep a transaction's keys to a few hundred.
    """
    if keys:
        await conn.execute(_LOCK_KEYS, {"space": space, "keys": keys})


class SessionLock:
    """A PostgreSQL session-level advisory lock, held on a connection of its own for as long as
    this process keeps it: one process of several does a job (e.g. heartbeats to OpenHIM) until it
    stops or its connection drops, then another takes over at its next ``hold()``."""

    def __init__(self, engine: AsyncEngine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._conn: AsyncConnection | None = None

    async def hold(self) -> bool:
        """True when this process holds the lock (taken now, or still held on a live connection)."""
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT 1"))
                await self._conn.commit()
                return True
            except Exception:  # the connection is gone, and the lock with it
                await self.release()
        conn = await self.engine.connect()
        try:
            got = bool((await conn.execute(_TRY_SESSION, {"name": self.name})).scalar())
            await conn.commit()  # the session lock outlives the transaction: never idle in one
        except BaseException:
            await conn.close()
            raise
        if got:
            self._conn = conn
        else:
            await conn.close()
        return got

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.execute(_UNLOCK_SESSION, {"name": self.name})
            await conn.commit()
        except Exception:  # closing the session releases it anyway
            pass
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
