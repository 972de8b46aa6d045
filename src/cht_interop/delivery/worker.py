"""The outbox worker (placeholder until delivery lands)."""

from __future__ import annotations

import asyncio

from cht_interop.db import Database
from cht_interop.delivery.registry import HandlerRegistry
from cht_interop.settings import Settings


class OutboxWorker:
    def __init__(self, db: Database, handlers: HandlerRegistry, settings: Settings) -> None:
        self.db, self.handlers, self.settings = db, handlers, settings

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
