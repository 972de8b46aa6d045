"""The FhirClient protocol: the only way the rest of the system talks to FHIR.

Two implementations: ``InProcessFhirClient`` (calls the embedded store directly, same DB) and
``HttpFhirClient`` (httpx, for HAPI or any R4 server). Resources are plain JSON dicts.
Errors are the typed ``cht_interop.fhir.errors`` tree in both implementations. What differs
between the two that a caller may plan for is declared in ``ClientCapabilities``: callers branch
on those, never on which implementation they hold.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cht_interop.delivery.jobs import NewJob

Resource = dict[str, Any]
SearchParams = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A create/update outcome: the stored resource and whether it was created (201) or not (200)."""

    resource: Resource
    created: bool

    @property
    def status(self) -> int:
        return 201 if self.created else 200


@dataclass(frozen=True, slots=True)
class ClientCapabilities:
    """What a FhirClient's server does differently, declared so callers need not guess from its type."""

    # How many ids or tokens one search may OR together (``identifier=a,b,c``). Over HTTP they go
    # in the URL, which servers cap (HAPI: ~8 kB); the embedded store takes far more at once.
    search_batch: int
    # ``transaction(trusted=...)`` is honoured: entries the caller built or checked itself skip the
    # server's schema validation. Where it is not (an external server validates everything), a
    # caller gains nothing by checking first.
    trusted_writes: bool
    # Subscription notifications are queued in the same write as the resource that matches them
    # (the embedded store). An external server notifies on its own, some time after the write.
    notifies_in_write: bool


@runtime_checkable
class FhirClient(Protocol):
    """A FHIR R4 server as the rest of the system sees it: plain JSON resources, typed errors,
    and the ``capabilities`` that say what to plan for."""

    @property
    def capabilities(self) -> ClientCapabilities:
        """What this client's server does differently (see ``ClientCapabilities``)."""
        ...

    async def create(self, resource: Resource, *, if_none_exist: str | None = None) -> WriteResult:
        """POST [type]; with ``if_none_exist`` a conditional create (200 + existing on one match)."""
        ...

    async def read(self, resource_type: str, resource_id: str) -> Resource:
        """GET [type]/[id]; ResourceNotFound / ResourceGone."""
        ...

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> Resource:
        """GET [type]/[id]/_history/[vid]; ResourceNotFound / ResourceGone."""
        ...

    async def update(self, resource: Resource, *, if_match: str | None = None) -> WriteResult:
        """PUT [type]/[id] (``resource['id']`` required); VersionConflict on a stale ``if_match``."""
        ...

    async def delete(self, resource_type: str, resource_id: str) -> None:
        """DELETE [type]/[id]."""
        ...

    async def search(self, resource_type: str, params: SearchParams = ()) -> Resource:
        """GET [type]?params → searchset Bundle (first page)."""
        ...

    async def search_all(self, resource_type: str, params: SearchParams = ()) -> list[Resource]:
        """Every matching resource, following ``next`` links."""
        ...

    async def transaction(
        self,
        bundle: Resource,
        *,
        jobs: Sequence[NewJob] = (),
        trusted: Collection[str] = (),
        handover: bool = False,
    ) -> Resource:
        """POST a batch/transaction Bundle. ``jobs`` go into the outbox: in-process, in the same DB
        transaction; over HTTP, committed right after the FHIR server has answered success.

        ``trusted``: fullUrls of entries whose resource the caller built itself (not client input);
        the embedded store skips their schema validation (references and Subscription criteria are
        still checked; ``capabilities.trusted_writes`` says whether it is honoured). ``handover``:
        the caller gives up ``bundle`` (it may be modified), so the in-process client need not copy
        it. A FHIR server over HTTP ignores both."""
        ...
