"""Whose follow-up it is: the API client that submitted it, kept on its ServiceRequest as a
``meta.tag`` (``OWNER_SYSTEM`` | client id) so it is written in the same transaction as the
follow-up, with the embedded store and an external FHIR server alike.

A requester sees (list status) and cancels only its own follow-ups; another's answers 404, as a
FHIR server hides what a client may not see. An administrator sees all. A follow-up without the
tag (submitted before clients had roles) belongs to the ``interop`` clients, as it did then.
"""

from __future__ import annotations

from typing import Any

from cht_interop.gateway.principals import Principal, Role

OWNER_SYSTEM = "urn:cht-interop:client"


def mark(service_request: dict[str, Any], client_id: str | None) -> None:
    """Tag the submitted ServiceRequest with its client (any such tag the client sent is replaced)."""
    if client_id is None:
        return
    meta = service_request.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    tags = [t for t in meta.get("tag") or [] if not (isinstance(t, dict) and t.get("system") == OWNER_SYSTEM)]
    meta["tag"] = [*tags, {"system": OWNER_SYSTEM, "code": client_id}]
    service_request["meta"] = meta


def owner_of(service_request: dict[str, Any]) -> str | None:
    meta = service_request.get("meta")
    for tag in meta.get("tag") or [] if isinstance(meta, dict) else []:
        if isinstance(tag, dict) and tag.get("system") == OWNER_SYSTEM and isinstance(tag.get("code"), str):
            return str(tag["code"])
    return None


def may_see(caller: Principal, owner: str | None) -> bool:
    """Whether ``caller`` may see and cancel a follow-up (or list) submitted by ``owner``."""
    if Role.ADMIN in caller.roles:
        return True
    if owner is None:
        return caller.has(Role.INTEROP)
    return owner == caller.client_id
