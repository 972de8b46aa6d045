"""Chooses the FhirClient: the embedded store, or an external server when FHIR_URL is set."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import httpx

from cht_interop.db import Database
from cht_interop.fhir.client import FhirClient
from cht_interop.settings import Settings

if TYPE_CHECKING:
    from cht_interop.fhir.store import FhirStore


class FhirSide(NamedTuple):
    """The process's FHIR: the client everyone talks through, and the embedded store behind it
    (None when FHIR_URL points at an external server). Both go into ``Services``."""

    client: FhirClient
    store: FhirStore | None


def build_fhir(settings: Settings, db: Database, http: httpx.AsyncClient) -> FhirSide:
    """``HttpFhirClient`` (basic auth from FHIR_USERNAME/FHIR_PASSWORD) when FHIR_URL is set, else
    ``InProcessFhirClient`` over the embedded store in our own database (returned beside it)."""
    if settings.fhir_url:
        from cht_interop.fhir.http_client import HttpFhirClient

        auth = None
        if settings.fhir_username:
            password = settings.fhir_password.get_secret_value() if settings.fhir_password else ""
            auth = httpx.BasicAuth(settings.fhir_username, password)
        return FhirSide(HttpFhirClient(settings.fhir_url, http, auth=auth, db=db), None)
    from cht_interop.fhir.inprocess import InProcessFhirClient
    from cht_interop.fhir.store import FhirStore

    base = settings.public_base_url or f"http://127.0.0.1:{settings.port}"
    store = FhirStore(db, base_url=f"{base}/fhir")
    return FhirSide(InProcessFhirClient(store), store)


def build_fhir_client(settings: Settings, db: Database, http: httpx.AsyncClient) -> FhirClient:
    """The client alone (see ``build_fhir``)."""
    return build_fhir(settings, db, http).client
