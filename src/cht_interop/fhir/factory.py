"""Chooses the FhirClient: the embedded store, or an external server when FHIR_URL is set."""

from __future__ import annotations

import httpx

from cht_interop.db import Database
from cht_interop.fhir.client import FhirClient
from cht_interop.settings import Settings


def build_fhir_client(settings: Settings, db: Database, http: httpx.AsyncClient) -> FhirClient:
    """``HttpFhirClient`` (basic auth from FHIR_USERNAME/FHIR_PASSWORD) when FHIR_URL is set, else
    ``InProcessFhirClient`` over the embedded store in our own database."""
    if settings.fhir_url:
        from cht_interop.fhir.http_client import HttpFhirClient

        auth = None
        if settings.fhir_username:
            password = settings.fhir_password.get_secret_value() if settings.fhir_password else ""
            auth = httpx.BasicAuth(settings.fhir_username, password)
        return HttpFhirClient(settings.fhir_url, http, auth=auth, db=db)
    from cht_interop.fhir.inprocess import InProcessFhirClient
    from cht_interop.fhir.store import FhirStore

    base = settings.public_base_url or f"http://127.0.0.1:{settings.port}"
    return InProcessFhirClient(FhirStore(db, base_url=f"{base}/fhir"))
