"""The CHT sandbox ASGI app: the CHT API subset the LTFU workflow touches, with the CHT's rules.

One module of thin handlers per area, each with its routes: ``api_routes`` (``/api/*`` and
``/medic/login``), ``couch_routes`` (``/medic/*`` as CouchDB answers), ``sandbox_routes``
(``/sandbox/*``, what the real CHT does not have). ``guards`` holds what they all do around their
work (rate limit, authentication, permissions, error envelopes).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette

from cht_interop.sandbox import api_routes, config_routes, couch_routes, sandbox_routes
from cht_interop.sandbox.config import SandboxConfig
from cht_interop.sandbox.core import Sandbox
from cht_interop.sandbox.guards import SandboxState
from cht_interop.sandbox.sentinel import Sentinel
from cht_interop.sandbox.store import MEDIC, Change


def create_sandbox_app(config: SandboxConfig) -> Starlette:
    """The sandbox app; its lifespan opens the store, starts Sentinel and closes V8 at shutdown."""
    session_secret = config.session_secret or secrets.token_bytes(32)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sandbox = Sandbox(config)
        http = httpx.AsyncClient(verify=True, follow_redirects=False)
        sentinel = Sentinel(sandbox, http)
        sandbox.store.on_write(sentinel.notify)
        state = SandboxState(sandbox, sentinel, session_secret)
        app.state.sandbox = state
        loop = asyncio.get_running_loop()

        async def _announce() -> None:
            async with state.changed:
                state.changed.notify_all()

        def on_write(db: str, _change: Change) -> None:
            if db == MEDIC:
                loop.call_soon_threadsafe(lambda: loop.create_task(_announce()))

        sandbox.store.on_write(on_write)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(sentinel.run_feed(stop), name="sandbox-sentinel-feed"),
            asyncio.create_task(sentinel.run_scheduler(stop), name="sandbox-sentinel-schedule"),
        ]
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await http.aclose()
            sandbox.close()

    # /medic/login (api_routes) and the settings rewrite paths (config_routes) before
    # /medic/{doc_id} (couch_routes); config_routes ends with the catch-all for other /api paths
    routes = [
        *api_routes.routes(),
        *config_routes.routes(),
        *couch_routes.routes(),
        *sandbox_routes.routes(),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
