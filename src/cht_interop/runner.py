"""``cht-interop up``: migrate, make sure the client has credentials, serve until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn
from rich.console import Console

from cht_interop.db.migrate import migrate_apart
from cht_interop.db.serving import AlreadyServing, sole_server
from cht_interop.gateway.credentials import ClientCredentials, load_or_create_client_credentials
from cht_interop.kit.fair import share_the_gil
from cht_interop.kit.gc import collect_young_less_often, memory_returned_once
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
    with _the_only_server(settings.resolved_database_url):
        _run_up(settings, host, cht_sandbox, cht_sandbox_port)


def _run_up(settings: Settings, host: str, cht_sandbox: bool, cht_sandbox_port: int) -> None:
    migrate_apart(settings.resolved_database_url)
    from cht_interop.observability.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)  # text by default; LOG_FORMAT=json
    creds = load_or_create_client_credentials(settings)
    sandbox_port = cht_sandbox_port if cht_sandbox else None
    from cht_interop.gateway.defaults import ensure_admin_now

    admin = ensure_admin_now(settings)  # the console's administrator (role admin)
    console.print(
        up_banner(settings, host, creds, admin, sandbox_port), soft_wrap=True, highlight=False, markup=False
    )
    # KeyboardInterrupt comes once every server has shut down (see ``_serve``): a normal stop
    with _sigterm_like_ctrl_c(), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, host, creds.password, cht_sandbox, cht_sandbox_port))


def up_banner(
    settings: Settings,
    host: str,
    creds: ClientCredentials,
    admin: ClientCredentials,
    sandbox_port: int | None,
) -> str:
    """What `up` serves, where its passwords are, and what to try first (one line per fact, never
    wrapped, so each URL and command copies whole)."""
    from cht_interop.gateway.credentials import ADMIN_SECRET_FILE, SECRET_FILE
    from cht_interop.sandbox.runner import ADMIN_SECRET_FILE as SANDBOX_SECRET_FILE

    api = f"http://{host}:{settings.port}"
    data_dir = settings.data_dir.resolve()
    secret = data_dir / SECRET_FILE
    lines = [
        f"cht-interop {api}",
        f"  LTFU mediator  {api}/mediator",
        f"  FHIR R4        {api}/fhir  (CapabilityStatement: {api}/fhir/metadata)",
        f"  API docs       {api}/docs  (OpenAPI: {api}/openapi.json)",
        f"  health         {api}/health/ready  (no login)",
    ]
    if sandbox_port is not None:
        sandbox = f"http://{host}:{sandbox_port}"
        lines += [f"  CHT sandbox    {sandbox}", f"  CHW page       {sandbox}/sandbox/chw"]
    if settings.interop_client_password is not None:
        lines.append(f"Log in as {creds.client_id}: the password in INTEROP_CLIENT_PASSWORD")
        password_command = "$INTEROP_CLIENT_PASSWORD"
    else:
        lines.append(f"Log in as {creds.client_id}: the password is in {secret}")
        if creds.generated_now:
            lines.append(f"  (generated now, shown once: {creds.password})")
        password_command = f"$(cat {secret})"
    if settings.admin_password is not None:
        lines.append(f"Console administrator {admin.client_id}: the password in ADMIN_PASSWORD")
    else:
        lines.append(
            f"Console administrator {admin.client_id}: the password is in {data_dir / ADMIN_SECRET_FILE}"
        )
        if admin.generated_now:
            lines.append(f"  (generated now, shown once: {admin.password})")
    if sandbox_port is not None:
        sandbox_admin = f"CHT sandbox admin {settings.cht_username}"
        if (data_dir / SANDBOX_SECRET_FILE).exists():
            lines.append(f"{sandbox_admin}: the password is in {data_dir / SANDBOX_SECRET_FILE}")
        else:
            lines.append(f"{sandbox_admin}: the password in CHT_PASSWORD")
    lines += [
        f"Data in {data_dir}; callbacks to private/loopback addresses are allowed.",
        f'Try: curl -u "{creds.client_id}:{password_command}" {api}/fhir/metadata',
        f"  or open {api}/docs",
    ]
    return "\n".join(lines)


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
    and again in a long-running server (measured: GC time in single follow-up requests halved).
    And young collections rarer (``kit/gc.py``), so the requests in flight are not promoted."""
    gc.collect()
    gc.freeze()
    collect_young_less_often()


def _api_options(settings: Settings, host: str) -> dict[str, Any]:
    """uvicorn's options for the API server, the same in ``up`` and ``serve``."""
    from cht_interop.observability.logs import uvicorn_log_config

    return {
        "host": host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "log_config": uvicorn_log_config(settings.log_format),
        "access_log": settings.access_log,
    }


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
    share_the_gil()
    api = uvicorn.Server(uvicorn.Config(app, lifespan="on", **_api_options(settings, host)))
    servers.append(api)
    names = [""]
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
                    log_level=settings.log_level.lower(),
                    log_config=uvicorn_log_config(settings.log_format),
                )
            )
        )
        names.append("cht-sandbox")
    _name_servers_in_logs()

    # the pages start-up freed go back once every server has started (kit/gc.py)
    started = asyncio.create_task(memory_returned_once(lambda: all(server.started for server in servers)))
    try:
        await asyncio.gather(*(_serve_as(name, server) for name, server in zip(names, servers, strict=True)))
    finally:
        started.cancel()


# Which of `up`'s servers is logging: a task's context is copied into every task it starts (the
# lifespan, each connection), so a record knows the server it came from.
_SERVER_NAME: contextvars.ContextVar[str] = contextvars.ContextVar("cht_interop_server", default="")


class _NameTheServer(logging.Filter):
    """uvicorn's servers log through the same two loggers with the same words, so with the sandbox
    beside the API every lifecycle line ("Application startup complete." …) appeared twice, with
    nothing telling them apart; the sandbox's lines now say whose they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = _SERVER_NAME.get()
        if name:
            record.msg = f"{name}: {record.msg}"
        return True


def _name_servers_in_logs() -> None:
    """After uvicorn configured its loggers (each ``uvicorn.Config`` does): add the filter once."""
    for logger_name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _NameTheServer) for f in logger.filters):
            logger.addFilter(_NameTheServer())


async def _serve_as(name: str, server: uvicorn.Server) -> None:
    _SERVER_NAME.set(name)
    await server.serve()


def run_serve(*, host: str, port: int | None) -> None:
    """The API alone (no worker), after applying migrations."""
    from cht_interop.app import create_app

    overrides: dict[str, Any] = {"PORT": port} if port is not None else {}
    settings = Settings(**overrides)
    with _the_only_server(settings.resolved_database_url):
        migrate_apart(settings.resolved_database_url)
        from cht_interop.observability.logs import configure_logging

        configure_logging(settings.log_format, settings.log_level)
        app = create_app(settings, run_worker=False)
        freeze_startup_heap()
        share_the_gil()
        uvicorn.run(app, **_api_options(settings, host))


@contextlib.contextmanager
def _the_only_server(database_url: str) -> Iterator[None]:
    """``serve`` and ``up`` are the only server of an SQLite database (``db/serving.py``): a second
    one exits at once with why (status 1)."""
    try:
        with sole_server(database_url):
            yield
    except AlreadyServing as exc:  # raised only on entering: nothing inside raises it
        console.print(f"refused: {exc}", soft_wrap=True, highlight=False, markup=False)
        raise SystemExit(1) from None


def run_worker() -> None:
    """One outbox worker until SIGINT/SIGTERM."""
    settings = Settings()
    migrate_apart(settings.resolved_database_url)
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
    # as serve's: a staged list's chunks and the CHT submissions keep thousands of objects alive at
    # once, and CPython's young collections every 700 (promoting them) brought full passes over the
    # ~150,000 startup objects: 15% of the worker's CPU writing a 10,000-entry list (1.7 of 17 s)
    freeze_startup_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    console.print("outbox worker running; Ctrl-C to stop")
    from cht_interop.journal.jobs import keep_purge_scheduled

    if services.journal is not None:
        services.journal.start()  # the job attempts' rows
    purge = asyncio.create_task(keep_purge_scheduled(services.db, stop))
    try:
        await OutboxWorker(services.db, services.handlers, settings).run(stop)
    finally:
        purge.cancel()
        await asyncio.gather(purge, return_exceptions=True)
        if services.journal is not None:
            await services.journal.stop()
        await services.http.aclose()
        await services.callback_http.aclose()
        await services.db.dispose()
