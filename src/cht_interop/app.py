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
from cht_interop.fhir.errors import FhirError, IssueType, operation_outcome
from cht_interop.gateway.auth import ClientAuthenticator
from cht_interop.gateway.credentials import load_or_create_client_credentials
from cht_interop.gateway.errors import AuthenticationRequired
from cht_interop.gateway.passwords import hash_password
from cht_interop.kit import exchanges
from cht_interop.kit.http import FHIR_JSON
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

    @app.exception_handler(AuthenticationRequired)
    async def _unauthenticated(_request: Request, exc: AuthenticationRequired) -> Response:
        # what FHIR clients have always seen: fhir.errors.AuthenticationRequired's rendering
        outcome = operation_outcome(exc.reason, code=IssueType.LOGIN)
        return outcome_response(exc.status, outcome, exc.headers)

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
    async def _unexpected(_request: Request, _exc: Exception) -> Response:
        return crash_answer()


def crash_answer() -> Response:
    """The plain answer to an unexpected exception."""
    return outcome_response(500, operation_outcome("Internal server error", code=IssueType.EXCEPTION))


async def build_services(settings: Settings, http: httpx.AsyncClient | None = None) -> Services:
    """Engine, HTTP client, FHIR client and job handlers for one process (no migrations here)."""
    from cht_interop.fhir.factory import build_fhir

    db = Database(settings.resolved_database_url)
    http = http or httpx.AsyncClient(timeout=settings.http_timeout_seconds, verify=True)
    creds = load_or_create_client_credentials(settings)
    authenticator = ClientAuthenticator({creds.client_id: hash_password(creds.password)})
    fhir = build_fhir(settings, db, http)
    from cht_interop.ltfu.service import LtfuService

    services = Services(
        ltfu=LtfuService(fhir.client, settings, db),
        settings=settings,
        db=db,
        http=http,
        fhir=fhir.client,
        fhir_store=fhir.store,
        authenticator=authenticator,
    )
    from cht_interop.handlers import register_all_handlers

    register_all_handlers(services)
    return services


def create_app(settings: Settings | None = None, *, run_worker: bool = True) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(settings)
        app.state.services = services
        exchanges.install(services.http)  # outbound calls recorded for OpenHIM's orchestrations
        worker_task: asyncio.Task[None] | None = None
        stop = asyncio.Event()
        if run_worker:
            from cht_interop.delivery.worker import OutboxWorker

            worker = OutboxWorker(services.db, services.handlers, settings)
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
            await services.http.aclose()
            await services.db.dispose()

    app = FastAPI(
        title="cht-interop",
        summary="LTFU interoperability between FHIR R4 health systems and the CHT",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    add_exception_handlers(app)
    # hardening: bodies over MAX_BODY_BYTES refused while they stream (413), and a crash answered
    # with a 500 that closes the connection; inside OpenHimResponses, which wraps both answers
    from cht_interop.kit.guard import RequestGuard

    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, crash_answer=crash_answer)
    from cht_interop.openhim.response import OpenHimResponses

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
    return app
