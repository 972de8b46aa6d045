"""The process's long-lived resources, built once by the app lifespan (or a CLI command / test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from cht_interop.db import Database
from cht_interop.delivery.registry import HandlerRegistry
from cht_interop.settings import Settings

if TYPE_CHECKING:
    from cht_interop.fhir.client import FhirClient
    from cht_interop.gateway.auth import ClientAuthenticator


@dataclass
class Services:
    """Typed app state: reach these through ``request.app.state.services``, never module globals."""

    settings: Settings
    db: Database
    http: httpx.AsyncClient
    fhir: FhirClient
    authenticator: ClientAuthenticator
    handlers: HandlerRegistry = field(default_factory=HandlerRegistry)
    # one object per domain that must be shared by the API and the worker of a process (e.g. the
    # LTFU service, which holds the duplicate-check lock), built on first use by that domain
    domain: dict[str, object] = field(default_factory=dict)
