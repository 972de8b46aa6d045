"""Liveness and readiness: the only unauthenticated endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    """The process can serve: the database answers. OpenHIM's state, when configured, is shown
    (``openhim``) but never makes the process unready: it serves without OpenHIM."""
    services = request.app.state.services
    extra = {"openhim": services.openhim.details()} if services.openhim is not None else {}
    try:
        async with services.db.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # readiness must report, not raise
        body = {"status": "unavailable", "database": type(exc).__name__, **extra}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok", "database": services.db.dialect, **extra})
