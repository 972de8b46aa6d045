"""FhirClient over the embedded store: same process, same database, no HTTP."""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence

from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir.client import ClientCapabilities, Resource, SearchParams, WriteResult
from cht_interop.fhir.errors import InvalidRequest
from cht_interop.fhir.search import parse_query_string
from cht_interop.fhir.store import FhirStore


def _pairs(params: SearchParams) -> list[tuple[str, str]]:
    if hasattr(params, "items"):
        return [(str(k), str(v)) for k, v in params.items()]
    return [(str(k), str(v)) for k, v in params]


# ids in one search: the store's SQL takes them as bound parameters, no URL to fit
IN_PROCESS = ClientCapabilities(search_batch=400, trusted_writes=True, notifies_in_write=True)


class InProcessFhirClient:
    """Calls :class:`FhirStore` directly. Code that needs the store itself (the /fhir routes)
    takes it from ``Services.fhir_store``, not from a client."""

    def __init__(self, store: FhirStore) -> None:
        self.store = store
        self.capabilities = IN_PROCESS

    async def create(self, resource: Resource, *, if_none_exist: str | None = None) -> WriteResult:
        out = await self.store.create(copy.deepcopy(resource), if_none_exist=if_none_exist)
        return WriteResult(copy.deepcopy(out.resource), out.created)

    async def read(self, resource_type: str, resource_id: str) -> Resource:
        stored = await self.store.read(resource_type, resource_id)
        assert stored.resource is not None
        return stored.resource

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> Resource:
        stored = await self.store.vread(resource_type, resource_id, version_id)
        assert stored.resource is not None
        return stored.resource

    async def update(self, resource: Resource, *, if_match: str | None = None) -> WriteResult:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str):
            raise InvalidRequest("update needs a resource with resourceType and id")
        out = await self.store.update(rtype, rid, copy.deepcopy(resource), if_match=if_match)
        return WriteResult(copy.deepcopy(out.resource), out.created)

    async def delete(self, resource_type: str, resource_id: str) -> None:
        await self.store.delete(resource_type, resource_id)

    async def search(self, resource_type: str, params: SearchParams = ()) -> Resource:
        return await self.store.search(resource_type, _pairs(params))

    async def search_all(self, resource_type: str, params: SearchParams = ()) -> list[Resource]:
        out: list[Resource] = []
        pairs = _pairs(params)
        if not any(k == "_count" for k, _ in pairs):
            pairs.append(("_count", "1000"))
        if not any(k == "_total" for k, _ in pairs):
            pairs.append(("_total", "none"))  # pages are followed by link; a count is a wasted query
        while True:
            bundle = await self.store.search(resource_type, pairs)
            out.extend(e["resource"] for e in bundle.get("entry", []))
            nxt = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
            if nxt is None:
                return out
            pairs = parse_query_string(nxt.split("?", 1)[1])

    async def transaction(
        self,
        bundle: Resource,
        *,
        jobs: Sequence[NewJob] = (),
        trusted: Collection[str] = (),
        handover: bool = False,
    ) -> Resource:
        # the store writes ids, meta and resolved references into the Bundle: copy unless handed over
        return await self.store.process_bundle(
            bundle if handover else copy.deepcopy(bundle), jobs=jobs, trusted=trusted
        )
