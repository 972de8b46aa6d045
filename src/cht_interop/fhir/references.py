"""Reference resolution on write: HAPI's rules for the Reference elements of a resource being stored.

Before a resource is staged every ``reference`` is resolved: a match URL (``Patient?identifier=x``)
becomes ``Type/id`` of its single match, an absolute URL into our own base becomes relative,
placeholders (``urn:``) left unresolved and malformed or unsupported references are refused, and
external URLs are accepted or refused by the store's setting. Plain ``Type/id`` references are not
looked up one by one: they are queued on the session and checked together when it flushes (one
chunked statement for a whole transaction Bundle).

Separate from the write session so that the rules (and their HAPI messages) read in one place;
it sees the session only through :class:`ReferenceScope`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from cht_interop.db.driver import Driver
from cht_interop.fhir import sql
from cht_interop.fhir.errors import InvalidRequest, PreconditionFailed, ResourceNotFound
from cht_interop.fhir.index_rows import split_reference
from cht_interop.fhir.outcomes import Resource, Stored
from cht_interop.fhir.registry import RESOURCE_TYPES, iter_references
from cht_interop.fhir.search import parse_match_url

RefCheck = tuple[str, str, str, str]  # target type, target id, element path, entry label


class ReferenceScope(Protocol):
    """What resolution needs of the write session it runs in (``session.WriteSession``)."""

    base_url: str
    entry_label: str  # "Bundle.entry[i]: " while a Bundle entry is written, for the messages
    ref_checks: list[RefCheck]  # queued existence checks, run by :func:`check_references`

    @property
    def allow_external_references(self) -> bool: ...

    @property
    def staged(self) -> Mapping[tuple[str, str], Stored]: ...

    async def search_ids(
        self, rtype: str, params: Sequence[tuple[str, str]], *, limit: int = 2
    ) -> list[str]: ...

    async def driver(self) -> Driver: ...


async def resolve_references(
    s: ReferenceScope, rtype: str, resource: Resource, references: list[tuple[str, Resource]] | None = None
) -> None:
    """Resolve (in place) the references of ``resource``; ``references``: its Reference objects,
    when the caller collected them already."""
    for path, ref_obj in iter_references(resource) if references is None else references:
        ref: str = ref_obj["reference"]
        where = f"{rtype}.{path}"
        if ref.startswith(("#", "urn:")):
            if ref.startswith("urn:"):
                raise InvalidRequest(
                    f"HAPI-1095: Unable to satisfy placeholder ID {ref} found in element named "
                    f"'{path.rsplit('.', 1)[-1]}' within resource of type: {rtype}",
                    expression=[where],
                )
            continue
        if "?" in ref:
            ref_obj["reference"] = await resolve_match_url(s, ref)
            continue
        ttype, tid, url = split_reference(ref, s.base_url)
        if url is not None:
            if not s.allow_external_references:
                raise InvalidRequest(
                    f'HAPI-0507: Resource contains external reference to URL "{ref}" but this server is '
                    "not configured to allow external references",
                    expression=[where],
                )
            continue
        if ttype is None or tid is None:
            raise InvalidRequest(f'HAPI-1100: Invalid reference "{ref}" at {where}', expression=[where])
        if ttype not in RESOURCE_TYPES:
            raise InvalidRequest(
                f"HAPI-1094: Resource type {ttype} is not supported, specified in path: {where}",
                expression=[where],
            )
        if ref != f"{ttype}/{tid}" and "/_history/" not in ref:
            ref_obj["reference"] = f"{ttype}/{tid}"  # an absolute URL into our own base
        staged = s.staged.get((ttype, tid))
        if staged is not None:
            if staged.deleted:
                raise InvalidRequest(
                    f"HAPI-1096: Resource {ttype}/{tid} is deleted, specified in path: {where}",
                    expression=[where],
                )
            continue
        s.ref_checks.append((ttype, tid, where, s.entry_label))


async def resolve_match_url(s: ReferenceScope, ref: str) -> str:
    """``Type/id`` of the one resource a match URL reference selects; 404 / 412 otherwise."""
    ttype, params = parse_match_url(ref)
    if ttype not in RESOURCE_TYPES:
        raise InvalidRequest(f'HAPI-1093: Invalid match URL "{ref}" - Unknown resource type: "{ttype}"')
    ids = await s.search_ids(ttype, params)
    if not ids:
        raise ResourceNotFound(f'HAPI-1091: Invalid match URL "{ref}" - No resources match this search')
    if len(ids) > 1:
        raise PreconditionFailed(
            f'HAPI-1092: Invalid match URL "{ref}" - Multiple resources match this search'
        )
    return f"{ttype}/{ids[0]}"


async def check_references(s: ReferenceScope) -> None:
    """Run the queued existence checks: every target staged in this session or stored and live."""
    checks, s.ref_checks = s.ref_checks, []
    wanted = {(t, i) for t, i, _, _ in checks if (t, i) not in s.staged}
    if not wanted:
        return
    live = await sql.live_keys(await s.driver(), wanted)
    for ttype, tid, where, label in checks:
        if (ttype, tid) in wanted and (ttype, tid) not in live:
            raise InvalidRequest(
                f"{label}HAPI-1094: Resource {ttype}/{tid} not found, specified in path: {where}",
                expression=[where],
            )
