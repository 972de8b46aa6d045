"""A requesting system's callback receiver: a real HTTP server on loopback that records what it gets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.live import serve_in_thread


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class CallbackReceiver:
    """Answers the first ``fail_first`` requests with 500, then 200 with an empty body (safe for HAPI)."""

    fail_first: int = 0
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._arrived = threading.Condition(self._lock)

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.requests.append(
                Received(
                    request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()}, body
                )
            )
            failing = len(self.requests) <= self.fail_first
            self._arrived.notify_all()
        return Response(status_code=500 if failing else 200)

    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "DELETE"])]
        )

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        """Block until ``count`` requests arrived (or fail the test)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout=timeout):
                raise AssertionError(f"expected {count} callback(s), got {len(self.requests)}")
            return list(self.requests)


@contextmanager
def callback_receiver(**kwargs: Any) -> Iterator[tuple[CallbackReceiver, str]]:
    receiver = CallbackReceiver(**kwargs)
    with serve_in_thread(receiver.app()) as base_url:
        yield receiver, base_url
