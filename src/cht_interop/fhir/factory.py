"""Chooses the FhirClient: the embedded store, or an external server when FHIR_URL is set."""

from __future__ import annotations

import httpx

from cht_interop.db import Database
from cht_interop.fhir.client import FhirClient
from cht_interop.settings import Settings


def build_fhir_client(settings: Settings, db: Database, http: httpx.AsyncClient) -> FhirClient:
    raise RuntimeError("the FHIR store has not landed yet")
