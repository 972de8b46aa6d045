"""FhirClient over the embedded store: same process, same database, no HTTP.

While a request or job is being recorded (``kit.exchanges``: the transaction log, OpenHIM's
orchestrations), each store call is recorded as a call to a peer would be, as the HTTP request
it stands for (``POST /fhir``, ``GET /fhir/Task?…``) with its answer, named the embedded FHIR
store: an administrator sees what a follow-up did to the store whichever FHIR server is used.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import orjson

from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir.client import ClientCapabilities, Resource, SearchParams, WriteResult
from cht_interop.fhir.errors import FhirError, InvalidRequest
from cht_interop.fhir.search import parse_query_string
from cht_interop.fhir.store import FhirStore
from cht_interop.kit import exchanges

T = TypeVar("T")
PEER = "embedded FHIR store"


async def recorded(
    method: str,
    path: str,
    run: Callable[[], Awaitable[T]],
    *,
    query: list[tuple[str, str]] | None = None,
    sent: Any = None,
    headers: dict[str, str] | None = None,
    answer: Callable[[T], tuple[int, Any]] = lambda result: (200, result),
) -> T:
    """``run()``, recorded as ``method path`` to the store when a recording is on (else just run)."""
    if exchanges.current() is None:  # nothing records: no serialising either
        return await run()
    body = orjson.dumps(sent) if sent is not None else b""
    exchange = exchanges.begin_local(PEER, method, path, query or (), body, headers)
    if exchange is None:
        return await run()
    try:
        result = await run()
    except FhirError as exc:
        exchanges.answer_local(exchange, int(exc.status), orjson.dumps(exc.to_outcome()))
        raise
    status, shown = answer(result)
    exchanges.answer_local(exchange, status, orjson.dumps(shown) if shown is not None else b"")
    return result


def _written(result: WriteResult) -> tuple[int, Any]:
    return (201 if result.created else 200), result.resource


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
        async def run() -> WriteResult:
            out = await self.store.create(copy.deepcopy(resource), if_none_exist=if_none_exist)
            return WriteResult(copy.deepcopy(out.resource), out.created)

        headers = {"If-None-Exist": if_none_exist} if if_none_exist else None
        path = f"/fhir/{resource.get('resourceType')}"
        return await recorded("POST", path, run, sent=resource, headers=headers, answer=_written)

    async def read(self, resource_type: str, resource_id: str) -> Resource:
        async def run() -> Resource:
            stored = await self.store.read(resource_type, resource_id)
            assert stored.resource is not None
            return stored.resource

        return await recorded("GET", f"/fhir/{resource_type}/{resource_id}", run)

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> Resource:
        async def run() -> Resource:
            stored = await self.store.vread(resource_type, resource_id, version_id)
            assert stored.resource is not None
            return stored.resource

        return await recorded("GET", f"/fhir/{resource_type}/{resource_id}/_history/{version_id}", run)

    async def update(self, resource: Resource, *, if_match: str | None = None) -> WriteResult:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str):
            raise InvalidRequest("update needs a resource with resourceType and id")

        async def run() -> WriteResult:
            out = await self.store.update(rtype, rid, copy.deepcopy(resource), if_match=if_match)
            return WriteResult(copy.deepcopy(out.resource), out.created)

        headers = {"If-Match": if_match} if if_match else None
        return await recorded(
            "PUT", f"/fhir/{rtype}/{rid}", run, sent=resource, headers=headers, answer=_written
        )

    async def delete(self, resource_type: str, resource_id: str) -> None:
        async def run() -> None:
            await self.store.delete(resource_type, resource_id)

        await recorded("DELETE", f"/fhir/{resource_type}/{resource_id}", run, answer=lambda _: (200, None))

    async def search(self, resource_type: str, params: SearchParams = ()) -> Resource:
        pairs = _pairs(params)

        async def run() -> Resource:
            return await self.store.search(resource_type, pairs)

        return await recorded("GET", f"/fhir/{resource_type}", run, query=pairs)

    async def search_all(self, resource_type: str, params: SearchParams = ()) -> list[Resource]:
        out: list[Resource] = []
        pairs = _pairs(params)
        if not any(k == "_count" for k, _ in pairs):
            pairs.append(("_count", "1000"))
        if not any(k == "_total" for k, _ in pairs):
            pairs.append(("_total", "none"))  # pages are followed by link; a count is a wasted query
        while True:
            bundle = await self.search(resource_type, pairs)
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
        async def run() -> Resource:
            # the store writes ids, meta and resolved references into the Bundle: copy unless handed over
            return await self.store.process_bundle(
                bundle if handover else copy.deepcopy(bundle), jobs=jobs, trusted=trusted
            )

        return await recorded("POST", "/fhir", run, sent=bundle)
