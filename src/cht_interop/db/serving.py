"""One serving process per SQLite database: ``serve`` and ``up`` hold a lock on a file beside it.

On SQLite, follow-up starts take turns inside one process only (``ltfu/duplicates.py``,
``ltfu/claims.py``); across processes it is PostgreSQL's advisory locks that keep two replicas
from starting one follow-up twice. A second ``serve`` on the same SQLite file would check and
write beside the first and could do just that, so it is refused at start, saying why and what to
run instead. ``worker`` processes take no such lock: they start no follow-up. The lock is the
kernel's (``flock``): a process killed with ``kill -9`` lets go of it with its last breath.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from cht_interop.db.engine import sqlite_file


class AlreadyServing(RuntimeError):
    """Another process already serves this SQLite database."""


@contextmanager
def sole_server(database_url: str) -> Iterator[None]:
    """Hold this SQLite database's serving lock while the block runs; ``AlreadyServing`` if another
    process holds it. Nothing to hold on PostgreSQL."""
    database = sqlite_file(database_url)
    if database is None:
        yield
        return
    lock_path = database.with_name(database.name + ".serving")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by child processes
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise AlreadyServing(
                f"another process (pid {holder}) already serves the SQLite database {database}. "
                "SQLite takes one serving process (`up`, or one `serve` beside `worker`s): two could "
                "start a follow-up twice. For several `serve` replicas, use PostgreSQL (DATABASE_URL)."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
