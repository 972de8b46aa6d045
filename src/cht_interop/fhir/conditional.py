"""Conditional create, update, delete and patch: the one implementation behind both the REST interactions
(``If-None-Exist``, ``PUT Type?…``, ``DELETE Type?…``) and the entries of a transaction Bundle
(``ifNoneExist``, ``PUT`` / ``DELETE`` with a match URL), so both answer with HAPI's rules and
HAPI's messages:

- create: no match → create; one match → that resource, unchanged (200); several → 412 HAPI-0958;
- update: one match → update it (a body id that differs → 400 HAPI-2279); no match → update-as-create
  with the body's id, or a create; several → 412 HAPI-0988;
- delete: one match → delete it; no match → nothing deleted; several → 412 HAPI-0962;
- patch (``PATCH Type?…``, a PATCH entry with a match URL): one match → patch it (``patch``); no
  match → 404 HAPI-0973; several → 412 HAPI-0972.

Like HAPI, the match count in the messages is at most 2: we stop looking after the second match.

Conditional create and update first take a transaction-scoped advisory lock on their match URL
(:func:`guard`, PostgreSQL; HAPI has the HFJ_RES_SEARCH_URL table for this), so two concurrent
requests with the same condition cannot both create. The functions work on a caller's
:class:`WriteSession`: the caller owns the transaction and finishes the session.
"""

from __future__ import annotations

from collections.abc import Sequence

from cht_interop.db.locks import advisory_xact_lock, advisory_xact_lock_all
from cht_interop.fhir.errors import InvalidRequest, PreconditionFailed, ResourceNotFound
from cht_interop.fhir.outcomes import Resource, WriteOutcome
from cht_interop.fhir.search import parse_match_url
from cht_interop.fhir.session import WriteSession
from cht_interop.fhir.validation import check_resource

Params = Sequence[tuple[str, str]]
_CODES = {"CREATE": "HAPI-0958", "UPDATE": "HAPI-0988", "DELETE": "HAPI-0962", "PATCH": "HAPI-0972"}


def match_url(rtype: str, params: Params) -> str:
    """The match URL of a conditional update or delete, as its messages show it."""
    return f"{rtype}?" + "&".join(f"{k}={v}" for k, v in params)


def several_matches(operation: str, url: str, count: int) -> PreconditionFailed:
    """412 for a conditional ``operation`` (CREATE, UPDATE, DELETE, PATCH) whose match URL matched more
    than one resource, worded as HAPI words it."""
    return PreconditionFailed(
        f'{_CODES[operation]}: Failed to {operation} resource with match URL "{url}" because this search '
        f"matched {count} resources"
    )


def other_id(url: str, matched: str, body_id: object) -> InvalidRequest:
    """400 for a conditional update whose body names another resource than the one it matched."""
    return InvalidRequest(
        f'HAPI-2279: Failed to UPDATE resource with match URL "{url}" because the matching resource '
        f"has ID {matched} but the body has ID {body_id}"
    )


def _guard_key(rtype: str, params: Params) -> str:
    return f"{rtype}?" + "&".join(f"{k}={v}" for k, v in sorted(params))


async def guard(s: WriteSession, rtype: str, params: Params) -> None:
    """Serialise conditional writes with the same match URL (HAPI: HFJ_RES_SEARCH_URL), so two
    concurrent conditional creates cannot both create. SQLite transactions are serial already."""
    if s.ctx.db.is_postgresql:
        key = _guard_key(rtype, params)
        if key not in s.guarded:
            await advisory_xact_lock(s.conn, key)
            s.guarded.add(key)


async def guard_all(s: WriteSession, conditions: Sequence[tuple[str, Params]]) -> None:
    """``guard`` for every condition of a transaction at once: one round trip instead of one per
    conditional entry, and one order for all, so that two transactions never deadlock on them."""
    if s.ctx.db.is_postgresql:
        keys = sorted({_guard_key(rtype, params) for rtype, params in conditions} - s.guarded)
        await advisory_xact_lock_all(s.conn, keys)
        s.guarded.update(keys)


def create_params(rtype: str, condition: str) -> list[tuple[str, str]]:
    """The match parameters of a conditional create's ``condition`` (``identifier=x`` or
    ``Type?identifier=x``)."""
    return parse_match_url(condition if "?" in condition else f"{rtype}?{condition}")[1]


async def create_match(
    s: WriteSession, rtype: str, condition: str, params: Params | None = None
) -> WriteOutcome | None:
    """Conditional create: the existing resource that ``condition`` matches (``params``: its match
    parameters, if already read), as a no-change outcome; None when there is none (create)."""
    if params is None:
        params = create_params(rtype, condition)
    await guard(s, rtype, params)
    ids = await s.search_ids(rtype, params)
    if len(ids) > 1:
        raise several_matches("CREATE", condition, len(ids))
    if ids:
        found = await s.current(rtype, ids[0])
        assert found is not None
        return WriteOutcome(found, created=False, changed=False)
    return None


async def update_target(s: WriteSession, rtype: str, params: Params, resource: Resource) -> str | None:
    """Conditional update: validate ``resource``, find the id it is to be written under and set it
    in the body. The matched resource's id, or the body's own id when nothing matched
    (update-as-create); None when neither (a plain create)."""
    check_resource(resource, rtype)
    await guard(s, rtype, params)
    ids = await s.search_ids(rtype, params)
    if len(ids) > 1:
        raise several_matches("UPDATE", match_url(rtype, params), len(ids))
    body_id = resource.get("id")
    if ids:
        if body_id is not None and body_id != ids[0]:
            raise other_id(match_url(rtype, params), ids[0], body_id)
        resource["id"] = ids[0]
        return ids[0]
    return str(body_id) if body_id else None


async def delete_target(s: WriteSession, rtype: str, params: Params) -> str | None:
    """Conditional delete: the id of the one resource the params match; None when none does."""
    ids = await s.search_ids(rtype, params)
    if len(ids) > 1:
        raise several_matches("DELETE", match_url(rtype, params), len(ids))
    return ids[0] if ids else None


async def patch_target(s: WriteSession, rtype: str, params: Params) -> str:
    """Conditional patch: the id of the one resource the params match; 404 when none does (HAPI
    ``BaseHapiFhirResourceDao.patch``: HAPI-0973 invalidMatchUrlNoMatches), 412 for several."""
    ids = await s.search_ids(rtype, params)
    if len(ids) > 1:
        raise several_matches("PATCH", match_url(rtype, params), len(ids))
    if not ids:
        url = match_url(rtype, params)
        raise ResourceNotFound(f'HAPI-0973: Invalid match URL "{url}" - No resources match this search')
    return ids[0]


async def update(s: WriteSession, rtype: str, params: Params, resource: Resource) -> WriteOutcome:
    """The whole conditional update, staged on ``s`` (the REST interaction)."""
    rid = await update_target(s, rtype, params, resource)
    if rid is None:
        return await s.create(resource)
    return await s.update(rtype, rid, resource)
