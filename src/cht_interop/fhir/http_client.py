"""FhirClient over HTTP (httpx), for HAPI or any FHIR R4 server.

Searches send ``Cache-Control: no-cache`` (HAPI otherwise may answer from a cached result set),
``next`` links are followed verbatim, a missing ``total`` is tolerated, and error statuses become
the typed ``cht_interop.fhir.errors``. For ``transaction(jobs=...)`` the jobs are written to our
outbox (through the ``Database`` given, if any) only after the server answered success.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from cht_interop.db import Database
from cht_interop.delivery.jobs import NewJob
from cht_interop.fhir.client import ClientCapabilities, Resource, SearchParams, WriteResult
from cht_interop.fhir.errors import FhirError, InvalidRequest, error_for_status

FHIR_JSON = "application/fhir+json"
# ids in one search go in the URL: 100 keep it well under HAPI's ~8 kB
OVER_HTTP = ClientCapabilities(search_batch=100, trusted_writes=False, notifies_in_write=False)
_HEADERS = {"Accept": FHIR_JSON, "Content-Type": f"{FHIR_JSON}; charset=utf-8"}


def _pairs(params: SearchParams) -> list[tuple[str, str]]:
    if hasattr(params, "items"):
        return [(str(k), str(v)) for k, v in params.items()]
    return [(str(k), str(v)) for k, v in params]


class HttpFhirClient:
    """Talks to ``base_url`` (e.g. ``http://hapi:8080/fhir``) with one shared ``httpx.AsyncClient``."""

    def __init__(
        self,
        base_url: str,
        http: httpx.AsyncClient,
        auth: httpx.Auth | tuple[str, str] | None = None,
        *,
        db: Database | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.auth = httpx.BasicAuth(*auth) if isinstance(auth, tuple) else auth
        self.db = db
        self.capabilities = OVER_HTTP

    async def _send(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: list[tuple[str, str]] | None = None,
    ) -> httpx.Response:
        all_headers = dict(_HEADERS)
        all_headers.update(headers or {})
        content = orjson.dumps(body) if body is not None else None
        if content is None:
            all_headers.pop("Content-Type")
        kwargs: dict[str, Any] = {"headers": all_headers, "content": content, "params": params}
        if self.auth is not None:
            kwargs["auth"] = self.auth
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            err = error_for_status(502, f"FHIR server unreachable: {type(exc).__name__}: {exc}")
            raise err from exc
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _error(response: httpx.Response) -> FhirError:
        outcome: dict[str, Any] | None = None
        diagnostics = f"FHIR server answered {response.status_code}"
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
            outcome = data
            texts = [
                str(i.get("diagnostics") or i.get("details", {}).get("text") or "")
                for i in data.get("issue", [])
            ]
            diagnostics = "; ".join(t for t in texts if t) or diagnostics
        elif response.text:
            diagnostics += f": {response.text[:300]}"
        return error_for_status(response.status_code, diagnostics, outcome)

    def _url(self, *parts: str) -> str:
        return "/".join([self.base_url, *(quote(p, safe="") for p in parts)])

    async def _resource_or_read(self, response: httpx.Response, rtype: str) -> Resource:
        if response.content:
            data = response.json()
            if isinstance(data, dict) and data.get("resourceType") == rtype:
                return data
        location = response.headers.get("location") or response.headers.get("content-location")
        if not location:
            raise InvalidRequest("FHIR server returned neither a resource nor a Location")
        rid = location.split(f"{rtype}/", 1)[-1].split("/")[0]
        return await self.read(rtype, rid)

    async def create(self, resource: Resource, *, if_none_exist: str | None = None) -> WriteResult:
        rtype = str(resource.get("resourceType"))
        headers = {"Prefer": "return=representation"}
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist
        response = await self._send("POST", self._url(rtype), body=resource, headers=headers)
        return WriteResult(await self._resource_or_read(response, rtype), response.status_code == 201)

    async def read(self, resource_type: str, resource_id: str) -> Resource:
        data: Resource = (await self._send("GET", self._url(resource_type, resource_id))).json()
        return data

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> Resource:
        url = self._url(resource_type, resource_id, "_history", version_id)
        data: Resource = (await self._send("GET", url)).json()
        return data

    async def update(self, resource: Resource, *, if_match: str | None = None) -> WriteResult:
        rtype, rid = str(resource.get("resourceType")), resource.get("id")
        if not isinstance(rid, str) or not rid:
            raise InvalidRequest("update needs a resource with an id")
        headers = {"Prefer": "return=representation"}
        if if_match:
            headers["If-Match"] = if_match
        response = await self._send("PUT", self._url(rtype, rid), body=resource, headers=headers)
        return WriteResult(await self._resource_or_read(response, rtype), response.status_code == 201)

    async def delete(self, resource_type: str, resource_id: str) -> None:
        try:
            await self._send("DELETE", self._url(resource_type, resource_id))
        except FhirError as exc:
            if int(exc.status) != 404:  # old HAPI answered 404 for an unknown id; both mean "gone"
                raise

    async def search(self, resource_type: str, params: SearchParams = ()) -> Resource:
        response = await self._send(
            "GET", self._url(resource_type), params=_pairs(params), headers={"Cache-Control": "no-cache"}
        )
        data: Resource = response.json()
        return data

    async def search_all(self, resource_type: str, params: SearchParams = ()) -> list[Resource]:
        out: list[Resource] = []
        bundle = await self.search(resource_type, params)
        seen: set[str] = set()
        while True:
            out.extend(e["resource"] for e in bundle.get("entry", []) if "resource" in e)
            nxt = next((lk.get("url") for lk in bundle.get("link", []) if lk.get("relation") == "next"), None)
            if not nxt or nxt in seen:
                return out
            seen.add(nxt)
            bundle = (await self._send("GET", nxt, headers={"Cache-Control": "no-cache"})).json()

    async def transaction(
        self,
        bundle: Resource,
        *,
        jobs: Sequence[NewJob] = (),
        trusted: Collection[str] = (),
        handover: bool = False,
    ) -> Resource:
        # ``trusted``/``handover`` are in-process savings: the remote server validates every entry
        response = await self._send("POST", self.base_url, body=bundle)
        result: Resource = response.json()
        if jobs:
            if self.db is None:
                raise RuntimeError("HttpFhirClient was given jobs but no Database to write the outbox")
            from cht_interop.delivery.outbox import enqueue

            async with self.db.transaction() as conn:
                await enqueue(conn, jobs)
        return result
