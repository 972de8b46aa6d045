"""Builds the console sub-app that ``app.py`` mounts at ``/console``."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from cht_interop.console import auth_routes, client_routes, delivery_routes, pages, transaction_routes
from cht_interop.console.timeline import job_label
from cht_interop.console.web import HERE, SecurityHeaders, add_error_pages, templates

# the deliveries' names as people read them, on every page that lists jobs
templates.env.globals["job_label"] = job_label


def build_console(host: FastAPI) -> FastAPI:
    """The /console sub-app; ``host`` is the interop app whose Services (on its state) it shows."""
    console = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    console.state.host = host
    console.add_middleware(SecurityHeaders)
    console.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    add_error_pages(console)
    console.include_router(auth_routes.router)
    console.include_router(pages.router)
    console.include_router(delivery_routes.router)
    console.include_router(client_routes.router)
    console.include_router(transaction_routes.router)
    return console
