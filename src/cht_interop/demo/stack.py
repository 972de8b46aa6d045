"""The embedded default the demo runs on: the interop app and the CHT sandbox, in this process.

As ``up --cht-sandbox`` starts them (migrations, the app with its outbox worker, the sandbox with
the shipped configuration pushing to the app), but on free loopback ports, with generated
passwords and a data directory of the demo's own, never the environment's database or FHIR
server. Each runs on an event loop of its own, in a helper thread: the sandbox computes tasks
and runs Sentinel synchronously, and on a shared loop that work stalls the interop app mid-
transaction (seen with 1,000 patients: the CHT's pushes timed out and SQLite writers waited past
their busy timeout). The demo's own loop (client, callback receiver, CHWs) is a third.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from cht_interop.app import create_app
from cht_interop.db import migrate
from cht_interop.gateway.passwords import generate_password
from cht_interop.sandbox.runner import build_sandbox_for_up
from cht_interop.settings import Settings

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Stack:
    """Where the demo finds the interop API and the CHT (sandbox), and how it logs in."""

    interop_url: str
    interop_username: str
    interop_password: str
    cht_url: str
    cht_username: str
    cht_password: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def embedded_settings(data_dir: Path, port: int, sandbox_port: int) -> Settings:
    """``up``'s settings for a throwaway run: SQLite in ``data_dir``, the sandbox as the CHT."""
    overrides: dict[str, Any] = {
        "PORT": port,
        "DATA_DIR": data_dir,
        "DATABASE_URL": f"sqlite:///{data_dir / 'cht-interop.sqlite3'}",
        "FHIR_URL": None,
        "OPENHIM_API_URL": None,
        "PUBLIC_BASE_URL": None,
        "CHT_URL": f"http://{HOST}:{sandbox_port}",
        "CHT_USERNAME": "admin",
        "CHT_PASSWORD": generate_password(),
        "INTEROP_CLIENT_ID": "interop-client",
        "INTEROP_CLIENT_PASSWORD": generate_password(),
        "ALLOW_PRIVATE_CALLBACKS": True,
        "ACCESS_LOG": False,
        "DELIVERY_POLL_SECONDS": 0.05,
        "LOG_LEVEL": "WARNING",
    }
    return Settings(_env_file=None, **overrides)


@contextmanager
def embedded_stack(data_dir: Path) -> Iterator[Stack]:
    """Start the interop app and the sandbox; stop both when the block ends."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port, sandbox_port = free_port(), free_port()
    settings = embedded_settings(data_dir, port, sandbox_port)
    migrate(settings.resolved_database_url)
    assert settings.interop_client_password is not None and settings.cht_password is not None
    interop_password = settings.interop_client_password.get_secret_value()
    interop_url = f"http://{HOST}:{port}"
    apps = {
        "interop app": (create_app(settings), port),
        "CHT sandbox": (
            build_sandbox_for_up(settings, interop_url=interop_url, interop_password=interop_password),
            sandbox_port,
        ),
    }
    servers: list[uvicorn.Server] = []
    threads: list[threading.Thread] = []
    # uvicorn installs no signal handlers outside the main thread: Ctrl-C stays the demo's
    for name, (app, app_port) in apps.items():
        config = uvicorn.Config(app, host=HOST, port=app_port, log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=asyncio.run, args=(server.serve(),), name=name, daemon=True)
        servers.append(server)
        threads.append(thread)
        thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    try:
        while not all(server.started for server in servers):
            if not all(t.is_alive() for t in threads) or time.monotonic() > deadline:
                raise RuntimeError("the interop app or the CHT sandbox did not start")
            time.sleep(0.02)
        yield Stack(
            interop_url=interop_url,
            interop_username=settings.interop_client_id,
            interop_password=interop_password,
            cht_url=f"http://{HOST}:{sandbox_port}",
            cht_username=settings.cht_username,
            cht_password=settings.cht_password.get_secret_value(),
        )
    finally:
        for server in servers:
            server.should_exit = True
        for thread in threads:
            thread.join(timeout=30)
