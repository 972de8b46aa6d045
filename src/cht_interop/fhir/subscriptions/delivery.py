"""Rest-hook notification delivery, byte for byte the way HAPI FHIR sends it (its RestHook subscriber).

A write that matches an active Subscription enqueues a ``fhir.subscription-notification`` job
(:func:`notification_job`, ordering key ``Subscription/<id>`` so one Subscription's notifications
stay in order). The handler here turns the job into the HTTP call:

- ``channel.payload`` set: ``PUT <endpoint>/<Type>/<id>`` with the resource version that triggered,
  ``If-Match: "<versionId>"`` and HAPI's content headers;
- no payload: an empty ``POST <endpoint>``;
- always ``X-Notification-Id`` (stable for the job, so receivers can drop duplicates) and every
  ``channel.header`` line split at its first ``:`` and added.

Success is any 2xx, except a 2xx whose non-empty JSON/XML body is not a FHIR resource (HAPI fails
to parse it and retries). Everything else is retried by the outbox until its horizon; then the
Subscription is set to ``error`` with the reason. Channel headers may hold credentials: they never
reach job payloads, attempt records or logs.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from cht_interop import __version__
from cht_interop.delivery.jobs import DeliveryReceipt, NewJob, PermanentDeliveryError, TransientDeliveryError
from cht_interop.delivery.registry import HandlerRegistry, Job
from cht_interop.fhir.errors import ResourceGone, ResourceNotFound, VersionConflict
from cht_interop.kit.addresses import address_is_public
from cht_interop.kit.pooled_http import CallFailed, PooledHttp
from cht_interop.settings import Settings

if TYPE_CHECKING:
    from cht_interop.fhir.client import FhirClient, Resource

KIND = "fhir.subscription-notification"
NOTIFICATION_ID_HEADER = "X-Notification-Id"

FHIR_JSON_CONTENT_TYPE = "application/fhir+json; charset=UTF-8"
FHIR_ACCEPT = "application/fhir+json;q=1.0, application/json+fhir;q=0.9"
USER_AGENT = f"cht-interop/{__version__} (FHIR Client; FHIR 4.0.1/R4)"
# mime types HAPI's client parses as a FHIR resource when a 2xx reply carries a body
_JSON_TYPES = {"application/fhir+json", "application/json+fhir", "application/json"}
_XML_TYPES = {"application/fhir+xml", "application/xml+fhir", "application/xml"}
# channel headers whose values are never secret (any other value is redacted from error texts)
_PLAIN_HEADERS = {"content-type", "accept", "accept-charset", "accept-encoding", "user-agent"}
_MAX_REPLY_BYTES = 1024 * 1024
_ERROR_BODY_CHARS = 500


def _without_userinfo(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    return str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else url


def _display_url(url: str) -> str:
    """The endpoint for people (job target, console): no userinfo, no query (tokens hide there)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    return str(parsed.copy_with(userinfo=b"", query=None, fragment=None))


def notification_job(subscription: Resource, resource: Resource, *, owed: bool = False) -> NewJob:
    """The outbox job for one match of ``resource`` (as stored, with ``meta.versionId``) on ``subscription``.

    Only ids go into the payload: the handler re-reads the Subscription (its current channel and
    headers) and the resource version when it delivers. ``owed``: the write that matched also
    switched the Subscription off (a completing Encounter and its follow-up's switch-off are one
    transaction); the payload says so, and the notification is delivered although the
    Subscription is off: its off version is not later than the job (``_off_after`` cannot tell).
    """
    endpoint = str((subscription.get("channel") or {}).get("endpoint") or "")
    payload: dict[str, Any] = {
        "subscription_id": str(subscription["id"]),
        "resource_type": str(resource["resourceType"]),
        "resource_id": str(resource["id"]),
        "version_id": str((resource.get("meta") or {}).get("versionId") or ""),
    }
    if owed:
        payload["owed"] = True
    return NewJob(
        kind=KIND,
        target=_display_url(endpoint) if endpoint else f"Subscription/{subscription['id']}",
        payload=payload,
        ordering_key=f"Subscription/{subscription['id']}",
    )


def parse_channel_headers(lines: Any) -> list[tuple[str, str]]:
    """``channel.header`` entries split at the first ``:`` and trimmed, as HAPI does; others dropped."""
    headers: list[tuple[str, str]] = []
    for line in lines or []:
        if not isinstance(line, str) or ":" not in line:
            continue
        name, value = line.split(":", 1)
        name, value = name.strip(), value.strip()
        if "\r" in value or "\n" in value:
            continue
        if name and all(33 <= ord(c) <= 126 and c != ":" for c in name):
            headers.append((name, value))
    return headers


def reply_failure(status: int, content_type: str, body: bytes) -> str | None:
    """Why HAPI would count this reply as a failed delivery, or None if it counts as delivered."""
    if not 200 <= status < 300:
        excerpt = body[: _ERROR_BODY_CHARS * 4].decode("utf-8", "replace")[:_ERROR_BODY_CHARS].strip()
        return f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if not body.strip():
        return None
    mime = content_type.split(";")[0].strip().lower()
    if mime in _JSON_TYPES:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if (
            isinstance(parsed, dict)
            and isinstance(parsed.get("resourceType"), str)
            and parsed["resourceType"]
        ):
            return None
        return (
            f"HTTP {status} with a {mime} body that is not a FHIR resource "
            "(no resourceType); HAPI counts this as a failed delivery"
        )
    if mime in _XML_TYPES:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            root = None
        if root is not None and root.tag.startswith("{http://hl7.org/fhir}"):
            return None
        return (
            f"HTTP {status} with a {mime} body that is not a FHIR resource; "
            "HAPI counts this as a failed delivery"
        )
    return None  # text/plain, html, …: not parsed, so delivered


def _is_private(address: str) -> bool:
    """Not globally reachable, or multicast: the callback rule of ``kit/addresses.py``."""
    return not address_is_public(address)


@dataclass
class SubscriptionNotifier:
    """The handler and dead-letter hook for ``fhir.subscription-notification`` jobs."""

    fhir: FhirClient
    http: PooledHttp
    settings: Settings

    # --- the delivery ---------------------------------------------------------------------

    async def deliver(self, job: Job) -> DeliveryReceipt:
        try:
            sub_id = str(job.payload["subscription_id"])
            rtype = str(job.payload["resource_type"])
            rid = str(job.payload["resource_id"])
            version = str(job.payload.get("version_id") or "")
        except KeyError as exc:
            raise PermanentDeliveryError(f"malformed notification job: no {exc.args[0]}") from None
        try:
            subscription = await self.fhir.read("Subscription", sub_id)
        except (ResourceNotFound, ResourceGone):
            raise PermanentDeliveryError(f"Subscription/{sub_id} no longer exists") from None
        if subscription.get("status") == "off" and not (
            job.payload.get("owed") is True or _off_after(subscription, job)
        ):
            return DeliveryReceipt(note=f"not delivered: Subscription/{sub_id} is off")
        channel = subscription.get("channel") or {}
        if channel.get("type") != "rest-hook":
            raise PermanentDeliveryError(
                f"channel type {channel.get('type')!r} is not delivered (rest-hook only)"
            )
        endpoint = channel.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise PermanentDeliveryError(f"Subscription/{sub_id} has no channel.endpoint")
        extra = parse_channel_headers(channel.get("header"))
        secrets = [v for k, v in extra if len(v) >= 4 and k.lower() not in _PLAIN_HEADERS]
        try:
            url = httpx.URL(endpoint)
        except httpx.InvalidURL:
            raise PermanentDeliveryError("channel.endpoint is not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise PermanentDeliveryError("channel.endpoint must be an absolute http(s) URL")
        basic: list[tuple[str, str]] = []
        if url.userinfo:
            # credentials in the URL become Basic auth unless a channel header already authorises;
            # either way they leave the URL so no error text or log can carry them
            secrets.extend(p for p in (url.username, url.password) if len(p) >= 4)
            if not any(name.lower() == "authorization" for name, _ in extra):
                token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode("ascii")
                basic.append(("Authorization", f"Basic {token}"))
                secrets.append(token)
            endpoint = _without_userinfo(endpoint)
        await self._check_destination(url)

        payload_type = channel.get("payload")
        headers: list[tuple[str, str]] = [
            ("Accept", FHIR_ACCEPT),
            ("Accept-Charset", "utf-8"),
            ("Accept-Encoding", "gzip"),
            ("User-Agent", USER_AGENT),
            (NOTIFICATION_ID_HEADER, job.notification_id or str(job.id)),
        ]
        if payload_type:
            if "xml" in str(payload_type).lower():
                raise PermanentDeliveryError(f"channel.payload {payload_type!r} is not supported (JSON only)")
            resource, note = await self._triggering_version(rtype, rid, version)
            if resource is None:
                return DeliveryReceipt(note=note)
            # the endpoint is a FHIR base: <base>/<Type>/<id>, one slash, any query kept at the end
            base = httpx.URL(endpoint)
            method = "PUT"
            target = str(base.copy_with(path=f"{base.path.rstrip('/')}/{rtype}/{rid}"))
            body = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers.insert(0, ("Content-Type", FHIR_JSON_CONTENT_TYPE))
            sent_version = str((resource.get("meta") or {}).get("versionId") or "")
            if sent_version:
                headers.append(("If-Match", f'"{sent_version}"'))
        else:
            method, target, body, note = "POST", endpoint, b"", None
            headers.insert(0, ("Content-Type", "application/x-www-form-urlencoded"))
        headers.extend(basic + extra)
        status = await self._send(method, target, headers, body, secrets)
        return DeliveryReceipt(http_status=status, note=note)

    async def _triggering_version(
        self, rtype: str, rid: str, version: str
    ) -> tuple[Resource | None, str | None]:
        """The version that matched (HAPI sends that one, not the latest)."""
        try:
            current: Resource | None = await self.fhir.read(rtype, rid)
        except (ResourceNotFound, ResourceGone):
            current = None
        current_version = str(((current or {}).get("meta") or {}).get("versionId") or "")
        if current is not None and (not version or current_version == version):
            return current, None
        if version:
            try:
                return await self.fhir.vread(rtype, rid, version), None
            except (ResourceNotFound, ResourceGone):
                return None, f"not delivered: {rtype}/{rid}/_history/{version} no longer exists"
        if current is None:
            return None, f"not delivered: {rtype}/{rid} was deleted before delivery"
        return current, None

    async def _send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, secrets: list[str]
    ) -> int:
        """The reply's status when delivered; TransientDeliveryError when not. Reads up to 1 MiB."""
        try:
            reply = await self.http.request(method, url, headers, body, max_body=_MAX_REPLY_BYTES)
        except CallFailed as exc:
            raise TransientDeliveryError(_redact(str(exc), secrets)) from None
        failure = reply_failure(reply.status, reply.content_type, reply.body)
        if failure is not None:
            raise TransientDeliveryError(_redact(failure, secrets), http_status=reply.status)
        return reply.status

    async def _check_destination(self, url: httpx.URL) -> None:
        """Refuse loopback/private/link-local destinations unless ALLOW_PRIVATE_CALLBACKS (SSRF guard)."""
        if self.settings.allow_private_callbacks:
            return
        host = url.host
        try:
            addresses = [host] if _is_ip(host) else await _resolve(host, url.port)
        except OSError:
            return  # the request itself will fail and be retried
        if any(_is_private(a) for a in addresses):
            raise PermanentDeliveryError(
                f"callback host {host!r} is a private or loopback address"
                " (set ALLOW_PRIVATE_CALLBACKS to allow)"
            )

    # --- dead letter ------------------------------------------------------------------------

    async def on_dead(self, job: Job, reason: str) -> None:
        """Mark the Subscription ``error`` with the reason, as R4 intends (HAPI itself never does).

        Safe to run twice (the outbox re-runs a hook whose run was not recorded): a Subscription
        already in error with this very notification's message is left as it is."""
        sub_id = str(job.payload.get("subscription_id") or "")
        if not sub_id:
            return
        error = f"notification {job.notification_id} not delivered: {reason}"[:1000]
        for _ in range(3):
            try:
                subscription = await self.fhir.read("Subscription", sub_id)
            except (ResourceNotFound, ResourceGone):
                return
            if subscription.get("status") == "off":
                return
            if subscription.get("status") == "error" and subscription.get("error") == error:
                return  # this hook already ran
            version = str((subscription.get("meta") or {}).get("versionId") or "") or None
            updated = {**subscription, "status": "error", "error": error}
            try:
                await self.fhir.update(updated, if_match=version)
                return
            except VersionConflict:
                continue  # changed meanwhile: read again and retry


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


async def _resolve(host: str, port: int | None) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _redact(text: str, secrets: list[str]) -> str:
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def register_handlers(
    handlers: HandlerRegistry, fhir: FhirClient, http: PooledHttp, settings: Settings
) -> None:
    """Called by ``cht_interop.handlers`` at start-up, with what the notifications need."""
    notifier = SubscriptionNotifier(fhir, http, settings)
    handlers.register(KIND, notifier.deliver, on_dead=notifier.on_dead)


def _off_after(subscription: Resource, job: Job) -> bool:
    """Whether the Subscription was switched off after this notification was queued: the event
    happened while it was active, so the notification is still owed (a dead-lettered callback
    retried by hand after the follow-up's Subscription was switched off, say)."""
    stamp = (subscription.get("meta") or {}).get("lastUpdated")
    if not isinstance(stamp, str):
        return False
    try:
        switched = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return False
    queued = job.created_at if job.created_at.tzinfo else job.created_at.replace(tzinfo=UTC)
    return switched > queued
