"""Group commit: calls that arrive while one batch is running are served together by the next one.

SQLite has one writer and every store call pays a fixed cost, so a burst of small requests (single
ServiceRequests, CHT submissions finishing together) is far cheaper as one lookup and one write.
Nothing is acknowledged before its batch has finished, so durability is unchanged.

One mechanism (:class:`Batches`) serves both kinds of turn a batch may need: a lock (one batch at a
time, :class:`Coalescer`) and a slot of the CHT window (a batch per free slot, ``cht/pacing.py``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

_LEAD = object()  # what a waiting call's future holds when it is to lead the next batch


class BatchAbandoned(Exception):
    """The call that was running this batch was cancelled before it finished; try again."""


@dataclass(slots=True, eq=False)
class _Waiting(Generic[K]):
    item: K
    future: asyncio.Future[object]


class Batches(Generic[K, T, V]):
    """``await batches(item)`` → the result ``run`` gave for that item within its batch.

    A call that finds no batch being gathered leads the next one: it waits for its turn (``turn()``,
    whose value ``run`` gets), takes up to ``size`` of the oldest waiting items and hands the lead
    to the next call still waiting, which waits for a turn of its own; then it runs its batch and
    answers every call in it. So as many batches run at once as ``turn`` allows, and the busier the
    turns, the fuller the batches. Followers wait on their own future, not on a lock: a finished
    batch wakes all of them in one event-loop turn (through a lock they woke one per turn, and
    every stage after this one saw them trickle in by twos and threes).

    ``run`` returns one result per item, in order; if it raises, every call in the batch fails with
    that error (``BatchAbandoned`` if it was cancelled). A call cancelled before its batch is taken
    leaves its item out.
    """

    def __init__(
        self,
        run: Callable[[list[K], T], Awaitable[Sequence[V]]],
        turn: Callable[[], AbstractAsyncContextManager[T]],
        *,
        size: int | None = None,
        linger: float = 0.0,
        join_woken: bool = False,
    ) -> None:
        self._run = run
        self._turn = turn
        self.size = max(1, size) if size is not None else None
        self._waiting: deque[_Waiting[K]] = deque()
        self._leading = False  # a call is gathering (or has been handed) the next batch
        # A turn that comes at once (a free slot) would send the first call of a wave alone: with
        # ``join_woken`` the leader first yields one loop turn to the calls woken together with it
        # (a batch of the stage before, released at once).
        self._join_woken = join_woken
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
        mine = _Waiting(item, loop.create_future())
        self._waiting.append(mine)
        if self._enough is not None and not self._enough.done() and len(self._waiting) >= self._last_size:
            self._enough.set_result(None)
        if self._leading:
            try:
                outcome = await mine.future
            except asyncio.CancelledError:
                if mine.future.done() and not mine.future.cancelled() and mine.future.result() is _LEAD:
                    self._step_down(mine)  # promoted, then cancelled before leading: pass it on
                raise
            if outcome is not _LEAD:
                return cast(V, outcome)
        else:
            self._leading = True
        return await self._lead(loop, mine)

    async def _lead(self, loop: asyncio.AbstractEventLoop, mine: _Waiting[K]) -> V:
        taken = False
        try:
            async with self._turn() as turn:
                if self._join_woken:
                    await asyncio.sleep(0)
                await self._gather_company(loop)
                batch = self._take()
                taken = True
                self._hand_over()
                return await self._run_batch(loop, batch, turn, mine)
        except BaseException:
            if not taken:  # cancelled (or refused a turn) before taking its batch: the next one leads
                self._step_down(mine)
            raise

    def _take(self) -> list[_Waiting[K]]:
        """The oldest waiting calls, up to ``size`` (the leader's own first), less the cancelled."""
        batch: list[_Waiting[K]] = []
        while self._waiting and (self.size is None or len(batch) < self.size):
            waiting = self._waiting.popleft()
            if not waiting.future.cancelled():
                batch.append(waiting)
        return batch

    async def _run_batch(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting[K]], turn: T, mine: _Waiting[K]
    ) -> V:
        try:
            results = await self._run([w.item for w in batch], turn)
        except BaseException as exc:
            # a cancelled leader must not look like a cancellation to the others
            shared = BatchAbandoned() if isinstance(exc, asyncio.CancelledError) else exc
            for waiting in batch:
                if waiting is not mine and not waiting.future.done():
                    waiting.future.set_exception(shared)
            raise
        self._last_size, self._last_end = len(batch), loop.time()
        own: list[V] = []
        for waiting, result in zip(batch, results, strict=True):
            if waiting is mine:
                own.append(result)
            elif not waiting.future.done():  # a cancelled follower's item ran all the same
                waiting.future.set_result(result)
        return own[0]

    def _step_down(self, mine: _Waiting[K]) -> None:
        """A leader leaving before it took its batch: its item goes, the next call leads."""
        with suppress(ValueError):  # (it is there: only the one leader takes from the queue)
            self._waiting.remove(mine)
        self._hand_over()

    def _hand_over(self) -> None:
        """The next waiting call leads the next batch; with none waiting, the next arrival will."""
        for waiting in self._waiting:
            if not waiting.future.done():
                waiting.future.set_result(_LEAD)
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


class Coalescer(Batches[K, None, V]):
    """``await coalescer(item)`` → the result ``run`` gave for that item within its batch: one
    batch at a time.

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
        held = lock or asyncio.Lock()
        super().__init__(lambda items, _none: run(items), lambda: held, linger=linger)
