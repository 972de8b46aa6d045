"""The interop API: /fhir, /mediator, /health, wired to one set of Services by the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from cht_interop.db import Database
from cht_interop.db.errors import RETRY_AFTER_SECONDS, is_database_busy, when_database_answers
from cht_interop.fhir.errors import FhirError, IssueType, operation_outcome
from cht_interop.fhir.validation import load_models
from cht_interop.gateway.defaults import open_gateway
from cht_interop.gateway.errors import GatewayRefusal
from cht_interop.gateway.gate import Gatekeeper
from cht_interop.kit import exchanges
from cht_interop.kit.http import FHIR_JSON
from cht_interop.kit.pooled_http import PooledHttp
from cht_interop.services import Services
from cht_interop.settings import Settings


def outcome_response(status: int, outcome: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(outcome, status_code=status, headers=headers, media_type=FHIR_JSON)


def allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path (Starlette's 405 names only the first
    route whose path matches, e.g. ``Allow: POST`` where GET, PUT, PATCH and DELETE work too)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    )


def add_exception_handlers(app: FastAPI) -> None:
    """Every error leaves as an OperationOutcome (the mediator may re-shape its own)."""

    @app.exception_handler(FhirError)
    async def _fhir_error(_request: Request, exc: FhirError) -> Response:
        return outcome_response(int(exc.status), exc.to_outcome(), exc.headers)

    @app.exception_handler(GatewayRefusal)
    async def _refused(_request: Request, exc: GatewayRefusal) -> Response:
        return refusal_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return outcome_response(400, operation_outcome("; ".join(parts), code=IssueType.INVALID))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = IssueType.NOT_FOUND if exc.status_code == 404 else IssueType.PROCESSING
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return outcome_response(exc.status_code, operation_outcome(str(exc.detail), code=code), headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> Response:
        return crash_answer(exc)


def refusal_response(refusal: GatewayRefusal) -> Response:
    """The gateway's 401/403/429 as FHIR clients have always seen a 401: an OperationOutcome."""
    outcome = operation_outcome(refusal.reason, code=IssueType(refusal.code))
    return outcome_response(refusal.status, outcome, refusal.headers)


def crash_answer(exc: BaseException) -> Response:
    """The answer to an exception no handler took, wherever it surfaced (a route, a middleware,
    the gateway's lookups): 503 + Retry-After when the database was busy or briefly unreachable
    (its transaction rolled back, so nothing was written and the same request will likely
    succeed), otherwise the plain 500."""
    if is_database_busy(exc):
        return busy_answer()
    return outcome_response(500, operation_outcome("Internal server error", code=IssueType.EXCEPTION))


def busy_answer() -> Response:
    """503, ``Retry-After``, and an OperationOutcome of type ``transient``."""
    outcome = operation_outcome(
        "The database is busy (another writer holds it); nothing was saved, retry shortly",
        code=IssueType.TRANSIENT,
    )
    return outcome_response(503, outcome, {"Retry-After": str(RETRY_AFTER_SECONDS)})


async def build_services(settings: Settings, http: httpx.AsyncClient | None = None) -> Services:
    """Engine, HTTP client, FHIR client and job handlers for one process (no migrations here)."""
    from cht_interop.fhir.factory import build_fhir

    load_models()  # the worker's (serve's were loaded with its app, before its heap was frozen)

    db = Database(
        settings.resolved_database_url,
        busy_timeout_seconds=settings.db_busy_timeout_seconds,
        background_checkpoints=True,  # this process serves writes: its commits never checkpoint
    )
    http = http or httpx.AsyncClient(timeout=settings.http_timeout_seconds, verify=True)
    # the interop client made sure of, in the db (waited for while the database restarts)
    authenticator = await when_database_answers(lambda: open_gateway(settings, db), "client accounts")
    fhir = build_fhir(settings, db, http)
    from cht_interop.journal.entries import BodyPolicy
    from cht_interop.journal.jobs import JournaledHandlers
    from cht_interop.journal.writer import JournalWriter
    from cht_interop.ltfu.service import LtfuService

    journal = JournalWriter(
        db,
        bodies=BodyPolicy(settings.journal_bodies, settings.journal_max_body_chars),
        queue_max=settings.journal_queue_max,
        enabled=settings.journal_enabled,
    )

    services = Services(
        ltfu=LtfuService(fhir.client, settings, db),
        settings=settings,
        db=db,
        http=http,
        fhir=fhir.client,
        fhir_store=fhir.store,
        authenticator=authenticator,
        handlers=JournaledHandlers(journal),  # every job attempt journaled
        journal=journal,
        callback_http=PooledHttp(
            timeout_seconds=settings.http_timeout_seconds,
            max_connections=max(100, settings.delivery_concurrency),
        ),
    )
    from cht_interop.handlers import register_all_handlers

    register_all_handlers(services)
    return services


def create_app(settings: Settings | None = None, *, run_worker: bool = True) -> FastAPI:
    settings = settings or Settings()
    load_models()  # now, not in the first requests (and frozen with the startup heap: ``runner``)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(settings)
        app.state.services = services
        exchanges.install(services.http)  # outbound calls recorded for OpenHIM's orchestrations
        if services.journal is not None:
            services.journal.start()
        worker_task: asyncio.Task[None] | None = None
        stop = asyncio.Event()
        if run_worker:
            from cht_interop.delivery.worker import OutboxWorker
            from cht_interop.journal.jobs import ensure_purge_scheduled

            worker = services.worker = OutboxWorker(services.db, services.handlers, settings)
            await ensure_purge_scheduled(services.db)
            worker_task = asyncio.create_task(worker.run(stop), name="outbox-worker")
        openhim_task: asyncio.Task[None] | None = None
        if settings.openhim_api_url:  # registers and heartbeats in the background, never blocking
            from cht_interop.openhim import heartbeat

            beating = heartbeat.start(settings, services.db, services.http, stop)
            services.openhim, openhim_task = beating.status, beating.task
        try:
            yield
        finally:
            stop.set()
            if worker_task is not None:
                # wait_for cancels the worker if it has not finished its batch in time
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(worker_task, timeout=10)
            if openhim_task is not None:  # a heartbeat in flight is cut short
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(openhim_task, timeout=1)
            if services.journal is not None:
                await services.journal.stop()
            await services.http.aclose()
            await services.callback_http.aclose()
            await services.db.dispose()

    app = FastAPI(
        title="cht-interop",
        summary="LTFU interoperability between FHIR R4 health systems and the CHT",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by apidocs, authenticated
    )
    add_exception_handlers(app)
    from cht_interop.journal.middleware import TransactionJournal
    from cht_interop.kit.guard import RequestGuard
    from cht_interop.openhim.response import OpenHimResponses

    # outermost last. Every request but /health and the console: an authenticated client with the
    # role the gateway's policy asks (401/403/429 inside OpenHIM's answer shape, and journaled)
    app.add_middleware(Gatekeeper, refuse=refusal_response)
    # bodies over MAX_BODY_BYTES refused while they stream (413), and a crash answered with a 500
    # that closes the connection: inside the log and OpenHIM's wrapping, which keep both answers
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, crash_answer=crash_answer)
    # the transaction log (inside OpenHimResponses: it records the plain answer, one shared
    # recording; outside the gate: a refused request has its row and X-Transaction-Id too)
    app.add_middleware(TransactionJournal, prefixes=("/mediator", "/fhir"), writer_of=_journal_of)
    # requests OpenHIM core routed (X-OpenHIM-TransactionID) are answered in application/json+openhim
    app.add_middleware(OpenHimResponses, prefix="/mediator", crash_answer=crash_answer)

    from cht_interop.fhir.endpoints import router as fhir_router
    from cht_interop.health import router as health_router
    from cht_interop.ltfu.endpoints import router as mediator_router

    # FastAPI tries every route of an included router in order (no prefix shortcut): the
    # mediator's few routes go first so the hot LTFU path is not matched against all of /fhir's
    app.include_router(health_router)
    app.include_router(mediator_router, prefix="/mediator")
    app.include_router(fhir_router, prefix="/fhir")
    from cht_interop.apidocs import install_api_docs

    install_api_docs(app)  # /openapi.json and /docs (Swagger UI served offline), authenticated
    # the administrators' console (server-rendered pages, its own session and security headers)
    from cht_interop.console.factory import build_console

    app.mount("/console", build_console(app))
    from cht_interop.observability.metrics import AppMetrics, RequestMetrics
    from cht_interop.observability.metrics import router as metrics_router

    app.include_router(metrics_router)  # /metrics, for Prometheus (an authenticated client)
    app.state.metrics = AppMetrics()
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)  # outermost: every request
    return app


def _journal_of(scope: Any) -> Any:
    """The process's journal writer (built by the lifespan, after the middleware stack)."""
    services = getattr(scope["app"].state, "services", None)
    return services.journal if services is not None else None
