"""The mediator's life in OpenHIM core: register in the background, then heartbeat every
``OPENHIM_HEARTBEAT_SECONDS`` with the process's uptime; apply the config core returns.

OpenHIM down, slow or refusing never stops nor delays the service: the loop runs beside it, backs
off (doubling, up to ``OPENHIM_MAX_BACKOFF_SECONDS``) and logs one line per change of state, not
per attempt. On PostgreSQL only the replica holding the ``openhim-heartbeat`` session lock
registers and heartbeats; the others read the stored config (``GET /mediators/:urn``) on the same
schedule so a change reaches every replica. SQLite runs one process: it always heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from cht_interop.db import Database
from cht_interop.db.locks import SessionLock
from cht_interop.openhim import config as mediator_config
from cht_interop.openhim.auth import without_userinfo
from cht_interop.openhim.client import OpenHimClient
from cht_interop.openhim.errors import OpenHimError, OpenHimRefused, OpenHimRejected
from cht_interop.openhim.mediator import URN, registration
from cht_interop.settings import Settings

log = logging.getLogger(__name__)
LOCK_NAME = "openhim-heartbeat"


@dataclass
class OpenHimStatus:
    """What ``/health/ready`` shows of OpenHIM (never a reason to be unready)."""

    state: str = "starting"  # starting | registered | standby | unavailable | refused | rejected
    registered: bool = False
    scheme: str | None = None
    last_heartbeat: datetime | None = None
    last_error: str | None = None
    failures: int = 0  # attempts failed in a row

    def details(self) -> dict[str, Any]:
        return {
            "urn": URN,
            "state": self.state,
            "registered": self.registered,
            "auth_scheme": self.scheme,
            "last_heartbeat": self.last_heartbeat.isoformat() if self.last_heartbeat else None,
            "last_error": self.last_error,
            "failures": self.failures,
        }


def _state_of(exc: OpenHimError) -> str:
    if isinstance(exc, OpenHimRefused):
        return "refused"
    if isinstance(exc, OpenHimRejected):
        return "rejected"
    return "unavailable"


class Heartbeat:
    """One per process; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, settings: Settings, db: Database, http: httpx.AsyncClient) -> None:
        assert settings.openhim_api_url is not None
        self.settings = settings
        self.db = db
        password = settings.openhim_password.get_secret_value() if settings.openhim_password else ""
        self.client = OpenHimClient(http, settings.openhim_api_url, settings.openhim_username or "", password)
        self.status = OpenHimStatus()
        self.started = time.monotonic()
        self._lock = SessionLock(db.engine, LOCK_NAME) if db.is_postgresql else None
        self._want_config = True
        self.task: asyncio.Task[None] | None = None

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.openhim_heartbeat_seconds
        cap = max(self.settings.openhim_max_backoff_seconds, interval)
        backoff = interval
        try:
            while not stop.is_set():
                try:
                    await self.beat()
                    backoff = interval
                    await self._wait(stop, interval)
                    continue
                except OpenHimError as exc:
                    self._failed(exc)
                except Exception as exc:  # never let the loop die: the service keeps serving
                    # the type only: a driver's message may carry connection details
                    self._failed(OpenHimError(f"unexpected {type(exc).__name__} (see the debug log)"))
                    log.debug("OpenHIM heartbeat round failed", exc_info=True)
                backoff = min(backoff * 2, cap)
                await self._wait(stop, backoff)
        finally:
            if self._lock is not None:
                await self._lock.release()

    async def beat(self) -> None:
        """One round: register if needed, heartbeat (or, on a standby replica, read the config)."""
        if self._lock is not None and not await self._lock.hold():
            self._want_config = True  # when this replica takes over, it asks for the config
            try:
                stored = await self.client.stored_config()
            except OpenHimRejected as exc:
                if exc.status != 404:
                    raise
                stored = None  # the heartbeating replica has not registered yet
            self.status.failures = 0
            self._enter("standby", None)
            if stored:
                mediator_config.receive(self.settings, stored)
            return
        if not self.status.registered:
            await self.client.register(registration(self.settings))
            self.status.registered = True
            self._want_config = True
        try:
            returned = await self.client.heartbeat(self.uptime(), want_config=self._want_config)
        except OpenHimRejected as exc:
            if exc.status == 404:  # core lost us (deleted in the console): register again
                self.status.registered = False
            raise
        self._want_config = False
        self.status.last_heartbeat = datetime.now(UTC)
        self.status.scheme = self.client.scheme
        self.status.failures = 0
        self._enter("registered", None)
        if returned:
            mediator_config.receive(self.settings, returned)

    def _failed(self, exc: OpenHimError) -> None:
        self.status.scheme = self.client.scheme
        self.status.failures += 1
        self._enter(_state_of(exc), str(exc))

    def _enter(self, state: str, error: str | None) -> None:
        self.status.last_error = error
        if state == self.status.state:
            return
        self.status.state = state
        where = without_userinfo(self.settings.openhim_api_url or "")
        if state == "registered":
            log.info(
                "OpenHIM: mediator %s registered at %s, heartbeating every %g s (%s authentication)",
                URN,
                where,
                self.settings.openhim_heartbeat_seconds,
                self.client.scheme,
            )
        elif state == "standby":
            log.info("OpenHIM: another replica heartbeats for %s; this one follows its config", URN)
        else:
            log.warning("OpenHIM at %s %s: %s (retrying in the background)", where, state, error)

    @staticmethod
    async def _wait(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)


def start(settings: Settings, db: Database, http: httpx.AsyncClient, stop: asyncio.Event) -> Heartbeat:
    """At app start (``OPENHIM_API_URL`` set): apply the kept mediator config, then register and
    heartbeat in a background task (``heartbeat.task``); returns at once, whatever core's state."""
    mediator_config.load(settings)
    heartbeat = Heartbeat(settings, db, http)
    heartbeat.task = asyncio.create_task(heartbeat.run(stop), name="openhim-heartbeat")
    return heartbeat
