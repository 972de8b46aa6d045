"""Slowing password guessing: after ``max_failures`` failed authentications from one address within
``window_seconds``, that address's unproven credentials are refused (429) until the oldest
failure leaves the window.

In memory, per process: with several replicas an attacker gets ``max_failures`` per replica per
window (still a few dozen guesses a minute against scrypt-hashed, generated passwords). A client
whose password this process has already verified is never held back (``ClientAuthenticator``
lets a remembered password through before asking the throttle), so a good client behind the same
proxy as a bad one keeps working.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_TRACKED_ADDRESSES = 10_000


@dataclass
class FailureThrottle:
    max_failures: int = 10
    window_seconds: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict, init=False)

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again, or None when it may now."""
        recent = self._recent(address)
        if recent is None or len(recent) < self.max_failures:
            return None
        return max(1, math.ceil(recent[0] + self.window_seconds - self.clock()))

    def failed(self, address: str) -> None:
        recent = self._recent(address)
        if recent is None:
            if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                self._forget_quiet_addresses()
            recent = self._failures[address] = deque(maxlen=self.max_failures)
        recent.append(self.clock())

    def _recent(self, address: str) -> deque[float] | None:
        recent = self._failures.get(address)
        if recent is None:
            return None
        horizon = self.clock() - self.window_seconds
        while recent and recent[0] <= horizon:
            recent.popleft()
        if not recent:
            del self._failures[address]
            return None
        return recent

    def _forget_quiet_addresses(self) -> None:
        for address in list(self._failures):
            self._recent(address)
        if len(self._failures) >= MAX_TRACKED_ADDRESSES:  # a flood of addresses: start over
            self._failures.clear()
