"""Sentinel, for the parts the workflow touches (cht-core sentinel/src/lib/feed.js, shared-libs/outbound).

A feed follower processes every change of ``medic`` in order, whatever wrote it (API endpoints,
``_bulk_docs``, ``PUT``): it hydrates the doc, runs ``generate_patient_id_on_people`` when enabled
and then ``mark_for_outbound``: every outbound config's ``relevant_to`` in V8, the payload mapped
in V8, deduplicated by payload hash per config against the ``<id>-info`` doc, an immediate POST,
and failures queued in ``task:outbound:<id>`` (medic-sentinel) for the scheduler, which retries
every ``outbound_retry_seconds`` (5 minutes in the CHT) with the current doc and config, forever,
without re-checking relevance. Secrets come from the vault and never reach logs or documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
from typing import Any
from urllib.parse import urljoin

import httpx

from cht_interop.sandbox.contacts import is_person
from cht_interop.sandbox.core import Sandbox
from cht_interop.sandbox.js import JsError
from cht_interop.sandbox.store import MEDIC, SENTINEL, Change, Doc, StoreError

log = logging.getLogger("cht_interop.sandbox.sentinel")

CHECKPOINT = "sentinel:medic"
USER_AGENT = "Community Health Toolkit/sandbox (cht-interop)"


class PushError(Exception):
    """One outbound push failed (mapping, auth configuration, transport or non-2xx)."""


def payload_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def info_id(doc_id: str) -> str:
    return f"{doc_id}-info"


def queue_id(doc_id: str) -> str:
    return f"task:outbound:{doc_id}"


class Sentinel:
    def __init__(self, sandbox: Sandbox, http: httpx.AsyncClient) -> None:
        self.sandbox = sandbox
        self.http = http
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = asyncio.Lock()
        self.schedule_runs = 0  # completed scheduler passes (the first one runs at start-up)
        self.first_schedule_pass = asyncio.Event()

    # -- running ------------------------------------------------------------------------------

    def notify(self, db: str, _change: Change) -> None:
        """Store listener: wake the feed follower (thread-safe; writes may come from any thread)."""
        if db == MEDIC and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run_feed(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake.set()
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.process_pending()
            except Exception:  # keep following the feed, as Sentinel does
                log.exception("sentinel: error while processing the changes feed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    async def run_scheduler(self, stop: asyncio.Event) -> None:
        """At start-up and then every ``outbound_retry_seconds`` (not aligned to doc times)."""
        while not stop.is_set():
            try:
                await self.retry_queued()
            except Exception:
                log.exception("sentinel: outbound schedule failed")
            self.schedule_runs += 1
            self.first_schedule_pass.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.sandbox.config.outbound_retry_seconds)

    async def process_pending(self) -> int:
        """Process every change after the checkpoint; returns how many were looked at."""
        async with self._busy:
            store = self.sandbox.store
            since = store.get_counter(CHECKPOINT)
            done = 0
            while True:
                changes = store.changes(MEDIC, since, limit=100)
                if not changes:
                    return done
                for change in changes:
                    await self._process(change)
                    since = change.seq
                    store.set_counter(CHECKPOINT, since)
                    done += 1

    # -- one change ---------------------------------------------------------------------------

    async def _process(self, change: Change) -> None:
        if change.deleted or change.id.startswith("_design/") or change.id.endswith("-info"):
            return
        doc = self.sandbox.store.find(MEDIC, change.id)
        if doc is None or doc.get("_rev") != change.rev:
            return  # a later revision will come through the feed
        settings = self.sandbox.settings()
        transitions = settings.get("transitions") or {}
        hydrated = self.sandbox.hydrate(doc)
        changed = False
        if _enabled(transitions, "generate_patient_id_on_people") and self._add_patient_id(doc, hydrated):
            changed = True
        if changed:
            try:
                self.sandbox.store.put(MEDIC, doc)
            except StoreError:
                return  # conflict: the newer revision is in the feed and will be processed
            self._record_transition(doc, "generate_patient_id_on_people", change.seq)
        if _enabled(transitions, "mark_for_outbound"):
            await self.mark_for_outbound(hydrated, settings)

    def _add_patient_id(self, doc: Doc, hydrated: Doc) -> bool:
        if doc.get("patient_id") or not is_person(self.sandbox, doc):
            return False
        while True:
            candidate = str(10000 + secrets.randbelow(90000))
            if not self.sandbox.shortcode_taken(candidate):
                break
        doc["patient_id"] = candidate
        hydrated["patient_id"] = candidate
        return True

    def _record_transition(self, doc: Doc, name: str, seq: int) -> None:
        info = self._info(doc["_id"])
        info.setdefault("transitions", {})[name] = {"last_rev": doc.get("_rev"), "seq": seq, "ok": True}
        self.sandbox.store.put(SENTINEL, info)

    def _info(self, doc_id: str) -> Doc:
        info = self.sandbox.store.find(SENTINEL, info_id(doc_id))
        if info is None:
            now = self.sandbox.wall_ms()
            info = {
                "_id": info_id(doc_id),
                "type": "info",
                "doc_id": doc_id,
                "initial_replication_date": now,
                "latest_replication_date": now,
                "transitions": {},
            }
        return info

    # -- mark_for_outbound --------------------------------------------------------------------

    async def mark_for_outbound(self, hydrated: Doc, settings: dict[str, Any]) -> None:
        outbound = settings.get("outbound") or {}
        if not isinstance(outbound, dict) or not outbound:
            return
        relevant: list[str] = []
        for name, conf in outbound.items():
            if not isinstance(conf, dict) or not conf.get("relevant_to"):
                continue
            try:
                if self.sandbox.js.relevant(str(conf["relevant_to"]), hydrated):
                    relevant.append(name)
            except JsError as exc:
                # one failing config aborts outbound for this change, as in Sentinel
                log.warning("outbound: relevant_to of %s failed on %s: %s", name, hydrated.get("_id"), exc)
                return
        failed: list[str] = []
        for name in relevant:
            try:
                await self.push(name, outbound[name], hydrated)
            except PushError as exc:
                log.warning("outbound: push %s for %s failed: %s", name, hydrated.get("_id"), exc)
                failed.append(name)
        if failed:
            doc_id = str(hydrated["_id"])
            if self.sandbox.store.find(SENTINEL, queue_id(doc_id)) is None:
                # no top-up of an existing queue doc (Sentinel's own TODO)
                with contextlib.suppress(StoreError):
                    self.sandbox.store.put(
                        SENTINEL,
                        {
                            "_id": queue_id(doc_id),
                            "type": "task:outbound",
                            "created": self.sandbox.wall_ms(),
                            "doc_id": doc_id,
                            "queue": failed,
                        },
                    )

    async def push(self, name: str, conf: dict[str, Any], hydrated: Doc) -> None:
        """Map, dedupe by hash, send; records success in the infodoc. Raises PushError."""
        try:
            payload = self.sandbox.js.map_payload(hydrated, conf.get("mapping") or {}, name)
        except JsError as exc:
            raise PushError(str(exc)) from None
        digest = payload_hash(payload)
        doc_id = str(hydrated["_id"])
        info = self._info(doc_id)
        previous = [
            t
            for t in info.get("completed_tasks", [])
            if t.get("type") == "outbound" and t.get("name") == name
        ]
        if previous and previous[-1].get("hash") == digest:
            return  # already sent this exact payload
        await self._send(name, conf.get("destination") or {}, payload)
        info = self._info(doc_id)
        info.setdefault("completed_tasks", []).append(
            {"type": "outbound", "name": name, "timestamp": self.sandbox.wall_ms(), "hash": digest}
        )
        self.sandbox.store.put(SENTINEL, info)

    async def _send(self, name: str, destination: dict[str, Any], payload: dict[str, Any]) -> None:
        base = str(destination.get("base_url") or "")
        path = str(destination.get("path") or "")
        url = urljoin(base.rstrip("/") + "/", path.lstrip("/"))
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT}
        auth: httpx.BasicAuth | None = None
        auth_conf = destination.get("auth")
        if auth_conf:
            kind = str(auth_conf.get("type") or "").lower()
            if kind == "basic":
                password = self._credential(auth_conf.get("password_key"))
                auth = httpx.BasicAuth(str(auth_conf.get("username") or ""), password)
            elif kind == "header":
                if str(auth_conf.get("name") or "").lower() != "authorization":
                    raise PushError(f"'{name}': only the Authorization header is supported")
                headers["Authorization"] = self._credential(auth_conf.get("value_key"))
            else:
                raise PushError(f"'{name}': unsupported auth type '{auth_conf.get('type')}'")
        try:
            response = await self.http.post(
                url,
                content=json.dumps(payload).encode(),
                headers=headers,
                auth=auth,  # type: ignore[arg-type]
                timeout=self.sandbox.config.outbound_timeout_seconds,
            )
        except httpx.HTTPError as exc:
            raise PushError(f"'{name}': {type(exc).__name__} sending to {url}") from None
        if not 200 <= response.status_code < 300:
            raise PushError(f"'{name}': {url} answered {response.status_code}")

    def _credential(self, key: Any) -> str:
        secret = self.sandbox.vault.get(str(key)) if key else None
        if secret is None:
            raise PushError(f"Credentials for '{key}' have not been configured")
        return secret

    # -- the schedule -------------------------------------------------------------------------

    async def retry_queued(self) -> None:
        async with self._busy:
            store = self.sandbox.store
            for task in store.all(SENTINEL, prefix="task:outbound:"):
                doc = store.find(MEDIC, str(task.get("doc_id")))
                if doc is None:
                    store.put(SENTINEL, {"_id": task["_id"], "_rev": task["_rev"], "_deleted": True})
                    continue
                hydrated = self.sandbox.hydrate(doc)
                outbound = self.sandbox.settings().get("outbound") or {}
                queue = list(task.get("queue") or [])
                for name in list(queue):
                    conf = outbound.get(name)
                    if not isinstance(conf, dict):
                        continue  # 5.2 leaves unknown configs in the queue
                    try:
                        await self.push(name, conf, hydrated)
                    except PushError as exc:
                        log.warning("outbound retry: %s for %s failed: %s", name, task.get("doc_id"), exc)
                        continue
                    # Sentinel removes with splice(<name>, 1): the name coerces to index 0
                    queue.pop(0)
                current = store.find(SENTINEL, task["_id"])
                if current is None:
                    continue
                if queue:
                    if queue != current.get("queue"):
                        current["queue"] = queue
                        store.put(SENTINEL, current)
                else:
                    store.put(SENTINEL, {"_id": current["_id"], "_rev": current["_rev"], "_deleted": True})


def _enabled(transitions: dict[str, Any], name: str) -> bool:
    value = transitions.get(name)
    if isinstance(value, dict):
        return not value.get("disable")
    return bool(value)
