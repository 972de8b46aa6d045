"""Requesters: who may ask for follow-ups, and where their callbacks go.

A requesting system registers an Endpoint (its callback address) and an Organization pointing at
it; a follow-up request names the Organization. This module owns both registrations (the callback
address policy they apply is ``callbacks.py``), and resolving a request's
``Organization/<identifier>`` to a ``Requester``, with the short cache that lets a burst of
requests resolve it once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from cht_interop.fhir.client import FhirClient, WriteResult
from cht_interop.fhir.errors import FhirError, InvalidRequest, ResourceGone, ResourceNotFound
from cht_interop.ltfu import resources as R
from cht_interop.ltfu import validation as V
from cht_interop.ltfu.callbacks import check_resolved_address
from cht_interop.ltfu.model import Requester
from cht_interop.ltfu.writes import upsert_by_identifier
from cht_interop.settings import Settings

# How long a resolved requester (Organization + Endpoint address) is reused; a changed callback
# address reaches new follow-ups after at most this long (a registration here clears it at once).
REQUESTER_CACHE_SECONDS = 5.0


class Requesters:
    """Endpoint and Organization registration, and requester resolution with its cache."""

    def __init__(self, fhir: FhirClient, settings: Settings) -> None:
        self.fhir = fhir
        self.settings = settings
        # organization identifier → (valid until, requester): a burst of requests resolves it once
        self._cache: dict[str, tuple[float, Requester]] = {}

    # -- registration ------------------------------------------------------------------------------

    async def register_endpoint(self, body: Any) -> WriteResult:
        """Create the Endpoint, or update the one with the same identifier (200)."""
        endpoint = V.validate_endpoint(body, allow_private=self.settings.allow_private_callbacks)
        self._cache.clear()
        await check_resolved_address(endpoint["address"], allow_private=self.settings.allow_private_callbacks)
        return await upsert_by_identifier(self.fhir, endpoint, endpoint["identifier"][0])

    async def register_organization(self, body: Any) -> WriteResult:
        """Create the Organization (its Endpoint must exist), or update the one with the same identifier."""
        organization, endpoint_id = V.validate_organization(body)
        self._cache.clear()
        try:
            await self.fhir.read("Endpoint", endpoint_id)
        except (ResourceNotFound, ResourceGone):
            raise V.invalid(f"Endpoint/{endpoint_id} not found", "Organization.endpoint[0]") from None
        identifiers = organization.get("identifier") or []
        if not identifiers:
            return await self.fhir.create(organization)
        return await upsert_by_identifier(self.fhir, organization, identifiers[0])

    # -- resolution --------------------------------------------------------------------------------

    async def resolve(self, refs: Iterable[str]) -> dict[str, Requester | FhirError]:
        """Each ``Organization/<ref>`` of the requests → its Requester, or why it cannot request."""
        out: dict[str, Requester | FhirError] = {}
        now = time.monotonic()
        for ref in refs:
            cached = self._cache.get(ref)
            if cached is not None and cached[0] > now:
                out[ref] = cached[1]
                continue
            try:
                requester = await self._requester(ref)
            except FhirError as exc:
                out[ref] = exc
            else:
                out[ref] = requester
                self._cache[ref] = (now + REQUESTER_CACHE_SECONDS, requester)
        return out

    async def _requester(self, ref: str) -> Requester:
        """The Organization with identifier ``ref`` (else id ``ref``) and its active Endpoint's address."""
        found = await self.fhir.search_all("Organization", [("identifier", ref)])
        organization = found[0] if found else None
        if organization is None:
            try:
                organization = await self.fhir.read("Organization", ref)
            except (ResourceNotFound, ResourceGone, InvalidRequest):
                raise ResourceNotFound(
                    f"Organization not found: no Organization with identifier {ref}"
                ) from None
        endpoint_id = None
        for endpoint in organization.get("endpoint") or []:
            endpoint_id = R.ref_id(endpoint, "Endpoint")
            if endpoint_id:
                break
        if endpoint_id is None:
            raise InvalidRequest("Organization has no endpoint attached")
        try:
            endpoint = await self.fhir.read("Endpoint", endpoint_id)
        except (ResourceNotFound, ResourceGone):
            raise InvalidRequest(f"Organization's Endpoint/{endpoint_id} no longer exists") from None
        address = endpoint.get("address")
        if not isinstance(address, str) or not address:
            raise InvalidRequest(f"Organization's Endpoint/{endpoint_id} has no address")
        if endpoint.get("status") not in (None, "active"):
            raise InvalidRequest(
                f"Organization's Endpoint/{endpoint_id} is {endpoint.get('status')}, not active"
            )
        identifier = R.first_identifier_value(organization) or ref
        return Requester(organization, identifier, address)
