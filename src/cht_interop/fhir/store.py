"""The embedded FHIR R4 store: :class:`FhirStore`, the facade every caller uses (the REST routes,
the in-process FhirClient, tests and benches). Each public method is one database transaction.

The facade only opens the transaction and composes the modules that do the work; look there for
a change (every module's docstring says what it owns):

- ``session``: the write unit (:class:`WriteSession`: stage → flush → finish), HAPI's write rules;
- ``conditional``: conditional create / update / delete / patch, for REST and Bundle entries alike;
- ``patch``, ``fhirpath_patch``: JSON Patch and FHIRPath Patch documents, applied as an update;
- ``references``: reference resolution and the batched existence checks of a write;
- ``sql``: every statement on the FHIR tables (defined in ``tables``);
- ``reads``: read, vread and search (paging links, ``_include``, ``_elements``);
- ``history``: the history interaction, its parameters and paging (SQL in ``sql_history``);
- ``summary``: the ``_summary`` / ``_elements`` views of a resource;
- ``operations``: ``$validate``;
- ``bundles``: batch and transaction Bundles;
- ``analyze``: the background ANALYZE after a bulk write (PostgreSQL);
- ``outcomes``: the value types (:class:`Stored`, :class:`WriteOutcome`, :class:`DeleteOutcome`);
- ``search``: query parsing; ``search_sql`` / ``search_memory`` evaluate a query in SQL / in
  memory; ``index_rows`` extracts a resource's search values;
- ``subscriptions``: criteria validation, the criteria index, matching on write, delivery.

Imports only point down this list's layers: ``store`` → ``bundles`` → ``conditional`` / ``reads``
→ ``session`` → ``references`` / ``subscriptions`` → ``sql`` → ``search*`` / ``index_rows`` →
``outcomes`` / ``errors``; no module of ``cht_interop.fhir`` imports one that imports it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import IntegrityError

from cht_interop.db import Database
from cht_interop.db.driver import Driver
from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir import bundles, conditional, history, operations, patch, reads, sql
from cht_interop.fhir.analyze import ANALYZE_AFTER
from cht_interop.fhir.errors import FhirError, VersionConflict
from cht_interop.fhir.outcomes import DeleteOutcome, Resource, Stored, WriteOutcome, outcome_info, parse_etag
from cht_interop.fhir.patch import Document
from cht_interop.fhir.search import parse_query
from cht_interop.fhir.session import Enqueue, StoreContext, WriteSession
from cht_interop.fhir.validation import check_resource
from cht_interop.kit.coalescer import BatchAbandoned, Coalescer


class FhirStore:
    """The embedded FHIR R4 store (domain layer: no HTTP here)."""

    def __init__(
        self,
        db: Database,
        *,
        base_url: str = "http://localhost/fhir",
        allow_external_references: bool = True,
        enqueue: Enqueue | None = None,
    ) -> None:
        self.ctx = StoreContext(db, base_url, allow_external_references, enqueue)
        self.db = db
        # reads that arrive while one is running are answered together: one connection and one
        # statement per type (a worker's batch of callbacks reads 64 Subscriptions at once)
        self._reads: Coalescer[tuple[str, str], Stored | FhirError] = Coalescer(
            lambda refs: reads.read_many(self.db, refs)
        )

    @property
    def base_url(self) -> str:
        """The store's own base URL (links and references when a request gives none)."""
        return self.ctx.base_url

    @property
    def allow_external_references(self) -> bool:
        return self.ctx.allow_external_references

    @property
    def analyzing(self) -> asyncio.Task[None] | None:
        """The running post-bulk ANALYZE, if any (see ``analyze``)."""
        return self.ctx.analyzer.task

    @analyzing.setter
    def analyzing(self, task: asyncio.Task[None] | None) -> None:
        self.ctx.analyzer.task = task

    # ---- writes ----

    @asynccontextmanager
    async def _writing(self, base_url: str | None) -> AsyncIterator[WriteSession]:
        """One write transaction's session; once it has committed, the background ANALYZE hears
        how many resources it wrote (``analyze``)."""
        async with self.db.transaction() as conn:
            s = WriteSession(self.ctx, conn, self.ctx.base(base_url))
            yield s
        self.ctx.analyzer.after_write(s.written)

    async def create(
        self,
        resource: Resource,
        *,
        resource_type: str | None = None,
        if_none_exist: str | None = None,
        base_url: str | None = None,
        jobs: Sequence[NewJob] = (),
    ) -> WriteOutcome:
        """create, or a conditional create with ``if_none_exist`` (a hit writes nothing)."""
        check_resource(resource, resource_type)
        rtype = resource["resourceType"]
        async with self._writing(base_url) as s:
            if if_none_exist:
                existing = await conditional.create_match(s, rtype, if_none_exist)
                if existing is not None:
                    return existing
            resource.pop("id", None)
            out = await s.create(resource)
            s.jobs.extend(jobs)
            await s.finish()
            return out

    async def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: Resource,
        *,
        if_match: str | None = None,
        base_url: str | None = None,
        jobs: Sequence[NewJob] = (),
    ) -> WriteOutcome:
        """update, or update-as-create for an unknown non-numeric id."""
        try:
            async with self._writing(base_url) as s:
                out = await s.update(resource_type, resource_id, resource, if_match=if_match)
                s.jobs.extend(jobs)
                await s.finish()
                return out
        except IntegrityError:
            # two concurrent update-as-create of the same client id: the loser sees the PK clash
            raise VersionConflict(
                f"HAPI-0550: {resource_type}/{resource_id} was created concurrently by another request; retry"
            ) from None

    async def conditional_update(
        self,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        resource: Resource,
        *,
        base_url: str | None = None,
    ) -> WriteOutcome:
        """``PUT [type]?params`` (see ``conditional``)."""
        async with self._writing(base_url) as s:
            out = await conditional.update(s, resource_type, params, resource)
            await s.finish()
            return out

    async def patch(
        self,
        resource_type: str,
        resource_id: str,
        operations: Document,
        *,
        if_match: str | None = None,
        base_url: str | None = None,
    ) -> WriteOutcome:
        """patch with a JSON Patch or FHIRPath Patch document (see ``patch``)."""
        async with self._writing(base_url) as s:
            out = await patch.patch(s, resource_type, resource_id, operations, if_match=if_match)
            await s.finish()
            return out

    async def conditional_patch(
        self,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        operations: Document,
        *,
        base_url: str | None = None,
    ) -> WriteOutcome:
        """``PATCH [type]?params`` (see ``conditional``)."""
        async with self._writing(base_url) as s:
            rid = await conditional.patch_target(s, resource_type, params)
            out = await patch.patch(s, resource_type, rid, operations)
            await s.finish()
            return out

    async def delete(self, resource_type: str, resource_id: str) -> DeleteOutcome:
        async with self._writing(None) as s:
            out = await s.delete(resource_type, resource_id)
            await s.finish()
            return out

    async def conditional_delete(
        self, resource_type: str, params: Sequence[tuple[str, str]]
    ) -> DeleteOutcome:
        """``DELETE [type]?params`` (see ``conditional``)."""
        async with self._writing(None) as s:
            rid = await conditional.delete_target(s, resource_type, params)
            if rid is None:
                return DeleteOutcome("Unable to find resource matching URL. Nothing deleted.", deleted=False)
            out = await s.delete(resource_type, rid)
            await s.finish()
            return out

    async def process_bundle(
        self,
        bundle: Any,
        *,
        base_url: str | None = None,
        jobs: Sequence[NewJob] = (),
        return_representation: bool = False,
        trusted: Collection[str] = (),
    ) -> Resource:
        """A batch or transaction Bundle (see ``bundles``). ``trusted``: fullUrls of entries built
        by our own code, not taken from a client; their resources skip schema validation (see
        :meth:`FhirClient.transaction`)."""
        return await bundles.process_bundle(
            self.ctx,
            bundle,
            self.ctx.base(base_url),
            jobs=jobs,
            representation=return_representation,
            trusted=trusted,
        )

    # ---- reads ----

    async def read(self, resource_type: str, resource_id: str) -> Stored:
        while True:
            try:
                found = await self._reads((resource_type, resource_id))
                break
            except BatchAbandoned:  # the read it joined was cancelled with its caller: read again
                continue
        if isinstance(found, FhirError):
            raise found
        return found

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> Stored:
        return await reads.vread(self.db, resource_type, resource_id, version_id)

    async def history(
        self,
        resource_type: str | None = None,
        resource_id: str | None = None,
        params: Iterable[tuple[str, str]] = (),
        *,
        base_url: str | None = None,
    ) -> Resource:
        """history of the server, a type (``resource_id`` None) or a resource: one page."""
        q = history.parse_history(resource_type, resource_id, params)
        return await history.history(self.db, q, self.ctx.base(base_url))

    async def search(
        self, resource_type: str, params: Iterable[tuple[str, str]], *, base_url: str | None = None
    ) -> Resource:
        q = parse_query(resource_type, params)
        async with self.db.connect() as conn:
            return await reads.search_on(conn, q, self.ctx.base(base_url))

    async def validate(self, resource_type: str, resource_id: str | None, body: Any) -> Resource:
        """``$validate`` (see ``operations``): the OperationOutcome, or the error; writes nothing."""
        return await operations.validate(self.db, resource_type, resource_id, operations.parse_request(body))

    async def search_ids(self, resource_type: str, params: Sequence[tuple[str, str]]) -> list[str]:
        """Ids matching a match URL's params (no paging), for callers that only need identity."""
        q = parse_query(resource_type, params, match_url=True)
        async with self.db.connect() as conn:
            return await sql.matching_ids(await Driver.of(conn), q, self.base_url)


__all__ = [
    "ANALYZE_AFTER",
    "DeleteOutcome",
    "FhirError",
    "FhirStore",
    "Stored",
    "WriteOutcome",
    "WriteSession",
    "outcome_info",
    "parse_etag",
]
