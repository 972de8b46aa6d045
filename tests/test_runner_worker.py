"""``worker`` sets up the cyclic collector as ``serve`` does (``runner.freeze_startup_heap``): before,
it kept CPython's young collections every 700 objects and no frozen startup heap, and their full
passes over the ~150,000 startup objects were 15% of its CPU writing a long LTFU list."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cht_interop import runner
from cht_interop.delivery.worker import OutboxWorker
from cht_interop.observability import logs


def test_the_worker_freezes_its_startup_heap_before_it_delivers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    monkeypatch.setattr(logs, "configure_logging", lambda *_a: None)
    steps: list[str] = []
    monkeypatch.setattr(runner, "freeze_startup_heap", lambda: steps.append("heap frozen"))

    async def deliver(_self: OutboxWorker, _stop: asyncio.Event) -> None:
        steps.append("delivering")

    monkeypatch.setattr(OutboxWorker, "run", deliver)
    runner.run_worker()
    assert steps == ["heap frozen", "delivering"]
