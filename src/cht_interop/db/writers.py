"""SQLite's one writer, shared by this process's writers: small ones are not queued behind bulk ones.

Writers queue here and each takes over the moment the last one commits (left to SQLite, a writer
that finds the file locked sleeps in its busy handler, 1, 2, 5 … 100 ms, however soon the lock
frees). A *bulk* writer holds the writer long (a 2,000-entry transaction's write: ~100 ms) or is
background work that can wait (the journal's batch). When the writer frees, the small writers
waiting then go first, so a single follow-up waits for at most the bulk write already running,
not for the ones queued beside it; a bulk writer waits for them at most ``BULK_PATIENCE_SECONDS``
in all, then takes the next turn (a stream of small writers cannot starve it).
"""

from __future__ import annotations

import asyncio
from collections import deque

# the longest a bulk writer lets small writers that arrived after it go first
BULK_PATIENCE_SECONDS = 0.5


class WriterQueue:
    """A lock with two queues: small writers in arrival order, then bulk writers in theirs."""

    def __init__(self, patience: float = BULK_PATIENCE_SECONDS) -> None:
        self.patience = patience
        self._held = False
        self._small: deque[asyncio.Future[None]] = deque()
        self._bulk: deque[tuple[float, asyncio.Future[None]]] = deque()

    @property
    def held(self) -> bool:
        return self._held

    async def acquire(self, *, bulk: bool = False) -> None:
        """Wait for the writer's turn (at once when it is free)."""
        if not self._held:
            self._held = True
            return
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        if bulk:
            self._bulk.append((loop.time(), turn))
        else:
            self._small.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed the turn, then cancelled before taking it: pass it on
            else:
                self._forget(turn)
            raise

    def release(self) -> None:
        """Hand the writer to the next waiter, or free it."""
        while (turn := self._next()) is not None:
            if not turn.done():  # a cancelled waiter may not have left its queue yet
                turn.set_result(None)
                return
        self._held = False

    def _next(self) -> asyncio.Future[None] | None:
        if self._bulk and (
            not self._small or asyncio.get_running_loop().time() - self._bulk[0][0] >= self.patience
        ):
            return self._bulk.popleft()[1]
        return self._small.popleft() if self._small else None

    def _forget(self, turn: asyncio.Future[None]) -> None:
        if turn in self._small:
            self._small.remove(turn)
        for waiting in self._bulk:
            if waiting[1] is turn:
                self._bulk.remove(waiting)
                break
