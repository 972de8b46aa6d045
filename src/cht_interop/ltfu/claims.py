"""In-process claims on follow-up start keys (patient + requester, identifiers): what lets a long
LTFU list check and stage on SQLite while single follow-ups for other patients go on.

The PostgreSQL keyed path locks the same keys with advisory locks; the embedded SQLite database
has one serving process, so a set in memory does. A claimer takes all its keys at once or waits
(all-or-nothing: no claimer holds some keys while waiting for others, so none deadlock), and
releases them after its write is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class KeyClaims:
    """The keys claimed in this process, and who waits for some to be released."""

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._waiters: list[asyncio.Future[None]] = []

    def held(self, key: str) -> bool:
        return key in self._held

    async def take(self, keys: Iterable[str], into: set[str]) -> bool:
        """Claim every key of ``keys`` (added to ``into``, what the caller will release), waiting
        while any is claimed by another. True if it waited."""
        wanted = set(keys) - into
        waited = False
        while not self._held.isdisjoint(wanted):
            waited = True
            released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(released)
            try:
                await released
            finally:
                if released in self._waiters:
                    self._waiters.remove(released)
        self._held |= wanted
        into |= wanted
        return waited

    def release(self, keys: set[str]) -> None:
        """Release ``keys`` (those ``take`` added to it): every waiter looks again."""
        if not keys:
            return
        self._held -= keys
        keys.clear()
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
