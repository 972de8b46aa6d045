"""The requesting side's client: register, ask for follow-ups, read their state, cancel.

One ``httpx.AsyncClient`` per instance (connection pool, TLS verification on unless told
otherwise), HTTP Basic as the interop client. Every refusal raises ``InteropError`` with the
server's OperationOutcome text; an LTFU list answers per entry (``ListResult``), so one bad entry
does not hide the others. ``InteropClient`` is the same, blocking, for code without an event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import anyio.from_thread
import httpx

from cht_interop.client.results import (
    FOLLOW_UP_SYSTEM,
    FollowUpStatus,
    InteropError,
    ListResult,
    Registration,
    Resource,
    Submission,
    last_id,
    outcome_text,
    submission_of_entry,
)

FHIR_JSON = "application/fhir+json"
CONNECTION_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "hl7-fhir-rest",
}
ProgressHook = Callable[[int, int], None]


def service_request(
    patient_cht_id: str,
    requester: str,
    *,
    reason: str | None = None,
    identifier: tuple[str, str] | None = None,
    **elements: Any,
) -> Resource:
    """A ServiceRequest the server takes: the patient by their CHT id, the requester by its
    Organization identifier; ``identifier`` = (system, value) of the facility's own id."""
    sr: Resource = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_cht_id}"},
        "requester": {"reference": f"Organization/{requester}"},
    }
    if reason:
        sr["reasonCode"] = [{"text": reason}]
    if identifier is not None:
        sr["identifier"] = [{"system": identifier[0], "value": identifier[1]}]
    sr.update(elements)
    return sr


class AsyncInteropClient:
    """The interop server's ``/mediator`` and ``/fhir`` as a requesting system uses them."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        verify: bool | str = True,
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._owned = http is None
        self.http = http or httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=(username, password),
            verify=verify,
            timeout=timeout,
            headers={"Accept": FHIR_JSON},
        )

    async def __aenter__(self) -> AsyncInteropClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()

    # -- plumbing ----------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        accept: Sequence[int] = (),
    ) -> httpx.Response:
        sent = dict(headers or {})
        if json is not None:
            sent["Content-Type"] = FHIR_JSON
        response = await self.http.request(method, url, json=json, params=params, headers=sent)
        if response.is_success or response.status_code in accept:
            return response
        raise _error(response)

    # -- registration ------------------------------------------------------------------------------

    async def register_endpoint(self, identifier: str, callback_url: str) -> Resource:
        """The Endpoint the server calls back (``PUT <callback_url>/Encounter/<id>``)."""
        body = {
            "resourceType": "Endpoint",
            "identifier": [{"value": identifier}],
            "status": "active",
            "connectionType": CONNECTION_TYPE,
            "payloadType": [{"text": "application/fhir+json"}],
            "address": callback_url,
        }
        resource: Resource = (await self._call("POST", "/mediator/endpoint", json=body)).json()
        return resource

    async def register_organization(self, identifier: str, name: str, endpoint_id: str) -> Resource:
        """The Organization follow-ups name as requester (by ``identifier``)."""
        body = {
            "resourceType": "Organization",
            "identifier": [{"value": identifier}],
            "name": name,
            "endpoint": [{"reference": f"Endpoint/{endpoint_id}"}],
        }
        resource: Resource = (await self._call("POST", "/mediator/organization", json=body)).json()
        return resource

    async def register(self, identifier: str, name: str, callback_url: str) -> Registration:
        """Endpoint then Organization (both deduplicated by identifier: safe to run at every start)."""
        endpoint = await self.register_endpoint(f"{identifier}-callback", callback_url)
        organization = await self.register_organization(identifier, name, str(endpoint["id"]))
        return Registration(str(endpoint["id"]), str(organization["id"]), identifier, callback_url)

    # -- asking for follow-ups ---------------------------------------------------------------------

    async def request_follow_up(self, sr: Resource) -> Submission:
        """One follow-up (a ServiceRequest, see ``service_request``): 201 started, 200 already open."""
        response = await self._call("POST", "/mediator/service-request", json=sr)
        task = _link(response, "Task")
        return Submission(
            status=response.status_code,
            service_request_id=last_id(response.headers.get("location"), "ServiceRequest"),
            task=task,
            subscription_id=str(response.json().get("id")) if response.content else None,
        )

    async def submit_list(
        self,
        service_requests: Sequence[Resource],
        *,
        respond_async: bool = False,
        poll_seconds: float = 0.5,
        on_progress: ProgressHook | None = None,
    ) -> ListResult:
        """An LTFU list as one ``batch`` Bundle. A long list (or ``respond_async``) is answered 202
        with a status URL: followed (``X-Progress`` reported to ``on_progress``) until the whole
        answer is there (bound the wait with ``asyncio.timeout``)."""
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"resource": sr, "request": {"method": "POST", "url": "ServiceRequest"}}
                for sr in service_requests
            ],
        }
        headers = {"Prefer": "respond-async"} if respond_async else {}
        response = await self._call(
            "POST", "/mediator/service-request", json=bundle, headers=headers, accept=(202,)
        )
        status_url = response.headers.get("content-location")
        polls = 0
        while response.status_code == 202 and status_url:
            if on_progress is not None and polls:
                done, total = _progress(response.headers.get("x-progress"))
                on_progress(done, total)
            await asyncio.sleep(poll_seconds if polls else 0)
            response = await self._call("GET", status_url, accept=(202,))
            polls += 1
        bundle_answer: Resource = response.json()
        submissions = [submission_of_entry(e) for e in bundle_answer.get("entry") or []]
        if on_progress is not None:
            on_progress(len(submissions), len(submissions))
        list_id = last_id(status_url, "ltfu-lists") if status_url else None
        return ListResult(submissions, list_id, status_url, polls)

    # -- reading and cancelling --------------------------------------------------------------------

    async def follow_up(self, task: str) -> FollowUpStatus | None:
        """The follow-up behind a Submission's ``task`` link (``Task/<id>`` or ``Task?identifier=…``);
        None while a background-written one is not there yet."""
        response = await self._call("GET", f"/fhir/{task}")
        body: Resource = response.json()
        if body.get("resourceType") == "Bundle":
            entries = [e.get("resource") for e in body.get("entry") or []]
            tasks = [t for t in entries if isinstance(t, dict) and t.get("resourceType") == "Task"]
            return FollowUpStatus.of_task(tasks[0]) if tasks else None
        return FollowUpStatus.of_task(body)

    async def follow_up_by_id(self, follow_up_id: str) -> FollowUpStatus | None:
        """By the server's follow-up id (``Task?identifier=urn:cht-interop:follow-up|<id>``)."""
        return await self.follow_up(f"Task?identifier={FOLLOW_UP_SYSTEM}|{follow_up_id}")

    async def follow_ups(self, tasks: Sequence[str], *, at_once: int = 8) -> list[FollowUpStatus | None]:
        """Many follow-ups, ``at_once`` reads at a time, in order."""
        gate = asyncio.Semaphore(at_once)

        async def one(task: str) -> FollowUpStatus | None:
            async with gate:
                return await self.follow_up(task)

        return list(await asyncio.gather(*(one(t) for t in tasks)))

    async def read_service_request(self, service_request_id: str) -> Resource:
        """The ServiceRequest as stored (its ``status`` follows the follow-up)."""
        resource: Resource = (await self._call("GET", f"/fhir/ServiceRequest/{service_request_id}")).json()
        return resource

    async def cancel(self, service_request_id: str, reason: str | None = None) -> Resource:
        """Cancel a follow-up (the CHW's task goes away); the ServiceRequest as it now is."""
        body = None
        if reason:
            body = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": reason}]}
        url = f"/mediator/service-request/{service_request_id}/$cancel"
        resource: Resource = (await self._call("POST", url, json=body)).json()
        return resource


def _error(response: httpx.Response) -> InteropError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return InteropError(response.status_code, outcome_text(body) or response.reason_phrase, body)
    return InteropError(response.status_code, response.text[:500] or response.reason_phrase)


def _link(response: httpx.Response, title: str) -> str | None:
    """The ``Link`` header's related resource of that title, relative to ``/fhir``."""
    header: str = response.headers.get("link", "")
    for part in header.split(","):
        if f'title="{title}"' in part and "<" in part:
            url: str = part[part.index("<") + 1 : part.index(">")]
            return url.split("/fhir/", 1)[1] if "/fhir/" in url else url
    return None


def _progress(header: str | None) -> tuple[int, int]:
    """``X-Progress: <n> of <m> follow-ups done`` → (n, m); (0, 0) when absent."""
    words = (header or "").split()
    if len(words) >= 3 and words[0].isdigit() and words[2].isdigit():
        return int(words[0]), int(words[2])
    return 0, 0


P = ParamSpec("P")
T = TypeVar("T")


class InteropClient(AbstractContextManager["InteropClient"]):
    """``AsyncInteropClient``, blocking: its calls run on an event loop in a helper thread
    (anyio's blocking portal), so one connection pool serves every call. Use it in ``with``."""

    def __init__(self, base_url: str, username: str, password: str, **options: Any) -> None:
        self._args = (base_url, username, password)
        self._options = options
        self._portal_cm: Any = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._client: AsyncInteropClient | None = None

    def __enter__(self) -> InteropClient:
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._client = self._portal.call(self._make)
        return self

    async def _make(self) -> AsyncInteropClient:
        return AsyncInteropClient(*self._args, **self._options)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._portal is not None and self._client is not None:
            self._portal.call(self._client.aclose)
        if self._portal_cm is not None:
            self._portal_cm.__exit__(kind, exc, tb)
        self._portal = self._client = self._portal_cm = None

    def _run(self, method: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._portal is None:
            raise RuntimeError("use InteropClient in a `with` block")

        async def call() -> T:
            return await method(*args, **kwargs)

        return self._portal.call(call)

    @property
    def aio(self) -> AsyncInteropClient:
        if self._client is None:
            raise RuntimeError("use InteropClient in a `with` block")
        return self._client

    def register(self, identifier: str, name: str, callback_url: str) -> Registration:
        return self._run(self.aio.register, identifier, name, callback_url)

    def request_follow_up(self, sr: Resource) -> Submission:
        return self._run(self.aio.request_follow_up, sr)

    def submit_list(self, service_requests: Sequence[Resource], **options: Any) -> ListResult:
        return self._run(self.aio.submit_list, service_requests, **options)

    def follow_up(self, task: str) -> FollowUpStatus | None:
        return self._run(self.aio.follow_up, task)

    def follow_up_by_id(self, follow_up_id: str) -> FollowUpStatus | None:
        return self._run(self.aio.follow_up_by_id, follow_up_id)

    def read_service_request(self, service_request_id: str) -> Resource:
        return self._run(self.aio.read_service_request, service_request_id)

    def cancel(self, service_request_id: str, reason: str | None = None) -> Resource:
        return self._run(self.aio.cancel, service_request_id, reason)
