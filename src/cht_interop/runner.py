"""``cht-interop up``: migrate, make sure the client has credentials, serve until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn
from rich.console import Console

from cht_interop.db import migrate
from cht_interop.gateway.credentials import load_or_create_client_credentials
from cht_interop.settings import Settings

console = Console(stderr=True)


def run_up(*, host: str, port: int | None, cht_sandbox: bool, cht_sandbox_port: int) -> None:
    overrides: dict[str, Any] = {"ALLOW_PRIVATE_CALLBACKS": True}
    if port is not None:
        overrides["PORT"] = port
    if cht_sandbox:
        overrides["CHT_URL"] = f"http://{host}:{cht_sandbox_port}"
    settings = Settings(**overrides)
    if cht_sandbox and settings.cht_password is None:
        # the mediator talks to the sandbox as its admin: same (generated, persisted) password
        from cht_interop.sandbox.runner import sandbox_admin_password

        settings = Settings(**overrides, CHT_PASSWORD=sandbox_admin_password(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.resolved_database_url)
    from cht_interop.observability.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)  # text by default; LOG_FORMAT=json
    creds = load_or_create_client_credentials(settings)
    if creds.generated_now:
        console.print(
            f"[bold]Interop client[/bold] {creds.client_id} — generated password (shown once, kept in "
            f"{settings.data_dir}/): [bold]{creds.password}[/bold]"
        )
    console.print(
        f"cht-interop on http://{host}:{settings.port} (FHIR at /fhir, mediator at /mediator); "
        f"data in {settings.data_dir.resolve()}; callbacks to private/loopback addresses are allowed."
    )
    # KeyboardInterrupt comes once every server has shut down (see ``_serve``): a normal stop
    with _sigterm_like_ctrl_c(), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, host, creds.password, cht_sandbox, cht_sandbox_port))


@contextlib.contextmanager
def _sigterm_like_ctrl_c() -> Iterator[None]:
    """SIGTERM (a service manager's stop) ends ``up`` as Ctrl-C does: KeyboardInterrupt, status 0."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def freeze_startup_heap() -> None:
    """Put what is alive once the app is built (modules, the FHIR models' validators, the app) out
    of the cyclic collector's reach: its full passes otherwise walk those ~150,000 objects again
    and again in a long-running server (measured: GC time in single follow-up requests halved)."""
    gc.collect()
    gc.freeze()


async def _serve(
    settings: Settings, host: str, client_password: str, cht_sandbox: bool, sandbox_port: int
) -> None:
    """Serve the API (and the sandbox) until SIGINT or SIGTERM, with uvicorn's own signal handling.

    A uvicorn Server handles those signals while it runs and, once shut down, restores the handler
    it found and raises the signal again (uvicorn 0.29+, "cooperative signal handling"). Started
    one after the other here, the last one started gets a signal first, shuts down, and passes it
    to the one before; the first passes it to Python's handler: KeyboardInterrupt out of
    ``asyncio.run``, once every server and lifespan has finished.
    """
    from cht_interop.app import create_app
    from cht_interop.observability.logs import uvicorn_log_config

    servers: list[uvicorn.Server] = []
    app = create_app(settings)
    freeze_startup_heap()
    api = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=settings.port,
            log_level="info",
            log_config=uvicorn_log_config(settings.log_format),
            lifespan="on",
            access_log=settings.access_log,
        )
    )
    servers.append(api)
    if cht_sandbox:
        from cht_interop.sandbox.runner import build_sandbox_for_up

        sandbox_app = build_sandbox_for_up(
            settings, interop_url=f"http://{host}:{settings.port}", interop_password=client_password
        )
        servers.append(
            uvicorn.Server(
                uvicorn.Config(
                    sandbox_app,
                    host=host,
                    port=sandbox_port,
                    log_level="info",
                    log_config=uvicorn_log_config(settings.log_format),
                )
            )
        )

    await asyncio.gather(*(server.serve() for server in servers))


def run_serve(*, host: str, port: int | None) -> None:
    """The API alone (no worker), after applying migrations."""
    from cht_interop.app import create_app

    overrides: dict[str, Any] = {"PORT": port} if port is not None else {}
    settings = Settings(**overrides)
    migrate(settings.resolved_database_url)
    from cht_interop.observability.logs import configure_logging, uvicorn_log_config

    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings, run_worker=False)
    freeze_startup_heap()
    uvicorn.run(
        app,
        host=host,
        port=settings.port,
        log_level="info",
        log_config=uvicorn_log_config(settings.log_format),
        access_log=settings.access_log,
    )


def run_worker() -> None:
    """One outbox worker until SIGINT/SIGTERM."""
    settings = Settings()
    migrate(settings.resolved_database_url)
    from cht_interop.observability.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    if settings.openhim_api_url:  # the retry horizon an administrator set in the OpenHIM console
        from cht_interop.openhim.config import load

        load(settings)
    asyncio.run(_work(settings))


async def _work(settings: Settings) -> None:
    from cht_interop.app import build_services
    from cht_interop.delivery.worker import OutboxWorker

    services = await build_services(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    console.print("outbox worker running; Ctrl-C to stop")
    from cht_interop.journal.jobs import ensure_purge_scheduled

    if services.journal is not None:
        services.journal.start()  # the job attempts' rows
    await ensure_purge_scheduled(services.db)
    try:
        await OutboxWorker(services.db, services.handlers, settings).run(stop)
    finally:
        if services.journal is not None:
            await services.journal.stop()
        await services.http.aclose()
        await services.db.dispose()
