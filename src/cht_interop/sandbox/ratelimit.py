"""Failed-login limiting as the CHT API does it (cht-core api/src/middleware/rate-limiter.js).

Every 401 or 429 answer consumes a point for the caller's IP, the username and the password
tried (keys are hashed, never kept in clear); 10 points within 10 seconds exhaust a key, and a
request carrying credentials with an exhausted key is answered 429 "Too Many Requests".
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque

POINTS = 10
WINDOW_SECONDS = 10.0


class FailedLoginLimiter:
    def __init__(self, points: int = POINTS, window_seconds: float = WINDOW_SECONDS) -> None:
        self._points = points
        self._window = window_seconds
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def keys(ip: str | None, username: str | None, password: str | None) -> list[str]:
        raw = [
            f"ip:{ip}" if ip else None,
            f"u:{username}" if username else None,
            f"p:{password}" if password else None,
        ]
        return [hashlib.sha256(k.encode()).hexdigest() for k in raw if k]

    def _live(self, key: str, now: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self._window:
            hits.popleft()
        return hits

    def exhausted(self, keys: list[str]) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._live(k, now)) >= self._points for k in keys)

    def consume(self, keys: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._live(key, now).append(now)
