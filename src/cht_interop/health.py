"""Liveness and readiness: the only unauthenticated endpoints."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from cht_interop.services import Services

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
    extra: dict[str, object] = {"openhim": services.openhim.details()} if services.openhim is not None else {}
    extra.update(_details(services))
    try:
        async with services.db.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # readiness must report, not raise
        body = {"status": "unavailable", "database": type(exc).__name__, **extra}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok", "database": services.db.dialect, **extra})


def _details(services: Services) -> dict[str, object]:
    """What helps an operator tell why: the worker's last loop, the peers' last answers, the
    transaction log's queue (none of them makes the process unready)."""
    details: dict[str, object] = {}
    worker = services.worker
    if worker is not None:
        last = worker.last_cycle_at
        details["worker"] = {
            "last_loop": last.isoformat() if last is not None else None,
            "seconds_ago": round((datetime.now(UTC) - last).total_seconds(), 3) if last is not None else None,
        }
    journal = services.journal
    if journal is not None:
        details["peers"] = {
            host: {"last_call": p.last_call_at, "last_status": p.last_status, "reachable": p.reachable}
            for host, p in sorted(journal.peers.items())
        }
        details["journal"] = {"queued": journal.depth, "written": journal.written, "dropped": journal.dropped}
    return details
