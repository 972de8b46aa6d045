"""The process's long-lived resources, built once by the app lifespan (or a CLI command / test).

This is the composition root's side of the house: domains never import it (they are handed what
they need), so it may name their types; those imports are for the type checker only, and the
module stays domain-free at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from cht_interop.db import Database
from cht_interop.delivery.registry import HandlerRegistry
from cht_interop.settings import Settings

if TYPE_CHECKING:
    from cht_interop.delivery.worker import OutboxWorker
    from cht_interop.fhir.client import FhirClient
    from cht_interop.fhir.store import FhirStore
    from cht_interop.gateway.auth import ClientAuthenticator
    from cht_interop.journal.writer import JournalWriter
    from cht_interop.kit.pooled_http import PooledHttp
    from cht_interop.ltfu.service import LtfuService
    from cht_interop.openhim.heartbeat import OpenHimStatus


@dataclass
class Services:
    """Typed app state: reach these through ``request.app.state.services``, never module globals."""

    settings: Settings
    db: Database
    http: httpx.AsyncClient
    fhir: FhirClient
    authenticator: ClientAuthenticator
    # rest-hook callbacks' lean client (``kit/pooled_http.py``), closed with ``http``
    callback_http: PooledHttp
    # the LTFU mediator, shared by the API and the outbox worker of this process (it holds the
    # duplicate-check lock)
    ltfu: LtfuService
    # the embedded FHIR store behind ``fhir`` (the /fhir routes serve it); None when FHIR_URL
    # points at an external server. Everything else talks FHIR through ``fhir`` only.
    fhir_store: FhirStore | None = None
    handlers: HandlerRegistry = field(default_factory=HandlerRegistry)
    # the mediator's registration and heartbeat state, when OPENHIM_API_URL is set (/health/ready)
    openhim: OpenHimStatus | None = None
    # the transaction log's writer (journal/), and the outbox worker this process runs, if any
    journal: JournalWriter | None = None
    worker: OutboxWorker | None = None
