"""SQLite's WAL checkpoints in a thread of their own, off the writers' path.

In WAL mode every commit appends its pages to the ``-wal`` file, and a checkpoint copies them
back into the database file and syncs it. Left to SQLite, the checkpoint runs inside the commit
that crosses ``wal_autocheckpoint`` pages: that writer holds the one write lock while it copies
and syncs, and every other write of every client waits behind it (the p99 of single follow-ups
over HTTP grew with the interval: 0.28 s at 1,000 pages, 0.41 s at 4,000, 0.58 s at 16,000).

A PASSIVE checkpoint takes no write lock: writers keep appending to the WAL while it copies. So
a process that serves writes (``serve``, ``worker``, ``up``) runs one every
``CHECKPOINT_EVERY_SECONDS`` on its own connection, in a thread of its own (until stopped, or
until the file is gone); SQLite releases the GIL while it copies and syncs. The connections' own
``wal_autocheckpoint`` stays as a backstop (``engine.py``), far enough out that the thread gets
there first under any load it can keep up with. Several processes on one file each run one; a
checkpoint already running elsewhere makes this one a no-op (PASSIVE never waits).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# Small and often: one checkpoint's burst of writes and its sync also slow the commits' own WAL
# syncs on the same disk. 5,000 commits of 20 rows in-process (load 5-6), commit p99 / p99.9:
# in the commits at 4,000 pages 30-46 / 44-94 ms; here every 0.5 s 26-38 / 149-157 ms, every
# 0.1 s 9-14 / 51-94 ms (and the run 10-50% shorter).
CHECKPOINT_EVERY_SECONDS = 0.1


class WalCheckpointer:
    """A daemon thread running ``PRAGMA wal_checkpoint(PASSIVE)`` on ``path`` until stopped."""

    def __init__(self, path: Path, every_seconds: float = CHECKPOINT_EVERY_SECONDS) -> None:
        self.path = path
        self.every_seconds = every_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoints", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop, and wait for a checkpoint in progress to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        failing = False
        try:
            while not self._stop.wait(self.every_seconds) and self.path.exists():
                try:
                    conn = conn or _wal_connection(self.path)
                    if conn is not None:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # a busy or vanished file: the backstop still runs
                    if not failing:
                        log.warning("background WAL checkpoint failed (commits checkpoint instead): %s", exc)
                    failing = True
                    continue
                failing = False
        finally:
            if conn is not None:
                conn.close()


def _wal_connection(path: Path) -> sqlite3.Connection | None:
    """A connection to checkpoint on, once the database is in WAL mode (the engine's first
    connection sets it); None before. A connection that saw the file before that would keep
    treating it as a rollback-journal database and never checkpoint."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.close()
        return None
    conn.execute("PRAGMA synchronous=FULL")  # the database file synced after each copy
    return conn
