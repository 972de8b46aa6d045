"""The process's long-lived resources, built once by the app lifespan (or a CLI command / test).

Runtime imports stay domain-free: the domain types below are for the type checker only, so any
domain may import this module without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from cht_interop.db import Database
from cht_interop.delivery.registry import HandlerRegistry
from cht_interop.settings import Settings

if TYPE_CHECKING:
    from cht_interop.fhir.client import FhirClient
    from cht_interop.fhir.store import FhirStore
    from cht_interop.gateway.auth import ClientAuthenticator
    from cht_interop.ltfu.service import LtfuService


@dataclass
class Services:
    """Typed app state: reach these through ``request.app.state.services``, never module globals."""

    settings: Settings
    db: Database
    http: httpx.AsyncClient
    fhir: FhirClient
    authenticator: ClientAuthenticator
    handlers: HandlerRegistry = field(default_factory=HandlerRegistry)
    # the embedded FHIR store behind ``fhir`` (the /fhir routes serve it); None when FHIR_URL
    # points at an external server. Everything else talks FHIR through ``fhir`` only.
    fhir_store: FhirStore | None = None
    # the LTFU mediator, shared by the API and the outbox worker of this process (it holds the
    # duplicate-check lock); built on first use by ``cht_interop.ltfu.service.ltfu_service``
    ltfu: LtfuService | None = None
