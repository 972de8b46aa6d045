"""Group commit: calls that arrive while one batch is running are served together by the next one.

SQLite has one writer and every store call pays a fixed cost, so a burst of small requests (single
ServiceRequests, CHT submissions finishing together) is far cheaper as one lookup and one write.
Nothing is acknowledged before its batch has finished, so durability is unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar, cast

K = TypeVar("K")
V = TypeVar("V")

_LEAD = object()  # what a waiting call's future holds when it is to lead the next batch


class BatchAbandoned(Exception):
    """The call that was running this batch was cancelled before it finished; try again."""


class Coalescer(Generic[K, V]):
    """``await coalescer(item)`` → the result ``run`` gave for that item within its batch.

    ``run`` takes every waiting item at once and returns one result per item, in order. It runs
    under ``lock`` (shared with other callers that must not interleave with it, if given).
    """

    def __init__(
        self,
        run: Callable[[list[K]], Awaitable[Sequence[V]]],
        *,
        lock: asyncio.Lock | None = None,
        linger: float = 0.0,
    ) -> None:
        self._run = run
        self._lock = lock or asyncio.Lock()
        self._waiting: list[tuple[K, asyncio.Future[object]]] = []
        self._leading = False  # a call is running (or has been handed) the next batch
        # Under load (the last batch had company, and ended moments ago), a new leader waits up
        # to ``linger`` seconds for the requests already on their way: without it, the first of a
        # wave runs alone and the rest wait a whole batch for the next one. It stops waiting as
        # soon as as many are waiting as the last batch held.
        self._linger = linger
        self._last_size = 0
        self._last_end = 0.0
        self._enough: asyncio.Future[None] | None = None

    async def __call__(self, item: K) -> V:
        loop = asyncio.get_running_loop()
        mine: asyncio.Future[object] = loop.create_future()
        self._waiting.append((item, mine))
        if self._enough is not None and not self._enough.done() and len(self._waiting) >= self._last_size:
            self._enough.set_result(None)
        if self._leading:
            # Followers wait on their own future, not on the lock: a finished batch wakes all of
            # them in one event-loop turn (through the lock they woke one per turn, and every
            # stage after this one saw them trickle in by twos and threes).
            try:
                outcome = await mine
            except asyncio.CancelledError:
                if mine.done() and not mine.cancelled() and mine.result() is _LEAD:
                    self._hand_over()  # promoted, then cancelled before leading: pass it on
                raise
            if outcome is not _LEAD:
                return cast(V, outcome)
        else:
            self._leading = True
        try:
            return await self._lead(loop, mine)
        finally:
            if not mine.done():  # cancelled before taking its batch: the next one runs the item
                mine.cancel()
            self._hand_over()

    async def _lead(self, loop: asyncio.AbstractEventLoop, mine: asyncio.Future[object]) -> V:
        async with self._lock:
            await self._gather_company(loop)
            group, self._waiting = self._waiting, []
            try:
                results = await self._run([i for i, _ in group])
            except BaseException as exc:
                # a cancelled leader must not look like a cancellation to the others
                shared = BatchAbandoned() if isinstance(exc, asyncio.CancelledError) else exc
                for _, future in group:
                    if future is not mine and not future.done():
                        future.set_exception(shared)
                raise
            self._last_size, self._last_end = len(group), loop.time()
            own: list[V] = []
            for (_, future), result in zip(group, results, strict=True):
                if future is mine:
                    own.append(result)
                elif not future.done():  # a cancelled follower's item ran all the same
                    future.set_result(result)
        return own[0]

    def _hand_over(self) -> None:
        """The next waiting call leads the next batch; with none waiting, the next arrival will."""
        for _, future in self._waiting:
            if not future.done():
                future.set_result(_LEAD)
                return
        self._leading = False

    async def _gather_company(self, loop: asyncio.AbstractEventLoop) -> None:
        busy = self._last_size > 1 and loop.time() - self._last_end < 4 * self._linger
        if not self._linger or not busy or len(self._waiting) >= self._last_size:
            return
        self._enough = loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._enough), self._linger)
        except TimeoutError:
            pass
        finally:
            self._enough = None
