"""Sandbox fixtures: an app with its lifespan running, driven in-process; a loopback receiver."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cht_interop.sandbox.app import create_sandbox_app
from cht_interop.sandbox.config import SandboxConfig, TaskRules
from cht_interop.sandbox.guards import SandboxState
from tests.fixtures.reference_deployment import reference_app_settings
from tests.support.live import serve_in_thread

ADMIN = ("admin", "Sandbox-Admin-pw-1")
JSON = {"Accept": "application/json"}
POST_JSON = {"Accept": "application/json", "Content-Type": "application/json"}


def reference_settings() -> dict[str, Any]:
    """The sandbox starts as the reference deployment (its outbound pushes, roles, form)."""
    return reference_app_settings()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ADMIN_AUTH = basic(*ADMIN)


@dataclass
class Running:
    app: Starlette
    client: httpx.AsyncClient
    config: SandboxConfig

    @property
    def state(self) -> SandboxState:
        state: SandboxState = self.app.state.sandbox
        return state

    async def drain(self) -> None:
        """Let Sentinel process every change written so far."""
        await self.state.sentinel.process_pending()


@asynccontextmanager
async def running_sandbox(config: SandboxConfig) -> AsyncIterator[Running]:
    app = create_sandbox_app(config)
    async with app.router.lifespan_context(app):
        # let the scheduler's start-up pass happen first, so tests drive retries themselves
        await asyncio.wait_for(app.state.sandbox.sentinel.first_schedule_pass.wait(), timeout=30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            yield Running(app, client, config)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., SandboxConfig]:
    def build(**overrides: Any) -> SandboxConfig:
        values: dict[str, Any] = {
            "data_path": tmp_path / "cht-sandbox.sqlite3",
            "admin_username": ADMIN[0],
            "admin_password": ADMIN[1],
            "app_settings": reference_settings(),
        }
        values.update(overrides)
        return SandboxConfig(**values)

    return build


@pytest.fixture
async def sandbox(make_config: Callable[..., SandboxConfig]) -> AsyncIterator[Running]:
    async with running_sandbox(make_config()) as running:
        yield running


# -- a loopback receiver standing in for the interop API --------------------------------------


@dataclass
class Receiver:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0
    status_when_failing: int = 503
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r["json"] for r in self.requests if r["path"] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    holder: dict[str, Receiver] = {}

    async def record(request: Request) -> Response:
        rec = holder["r"]
        body = await request.body()
        with rec.lock:
            entry = {
                "path": request.url.path,
                "headers": dict(request.headers),
                "json": json.loads(body) if body else None,
            }
            if rec.fail_next > 0:
                rec.fail_next -= 1
                entry["answered"] = rec.status_when_failing
                rec.requests.append(entry)
                return JSONResponse({"error": "try later"}, status_code=rec.status_when_failing)
            entry["answered"] = 201
            rec.requests.append(entry)
        return JSONResponse({"ok": True}, status_code=201)

    app = Starlette(routes=[Route("/{path:path}", record, methods=["POST"])])
    with serve_in_thread(app) as url:
        holder["r"] = Receiver(url)
        yield holder["r"]


def tasks_fixture_rules() -> TaskRules:
    """Our own copy of a task rule for tests that must not depend on the shipped one."""
    return TaskRules.from_directory(Path(__file__).parent / "fixtures")
