"""Batched FHIR look-ups: many ids per search, a few searches at once.

A list of 10,000 entries is resolved with a few dozen searches, not 10,000 reads. How many ids one
search may carry is the client's declared ``capabilities.search_batch`` (a URL limit over HTTP);
how many of a list's searches run at once is ``SEARCHES_AT_ONCE``. Every LTFU step that looks up
more than a handful of resources chunks through here, so both knobs live in this one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from cht_interop.fhir.client import FhirClient, Resource
from cht_interop.ltfu import resources as R

# Pooled connections one long list's look-up may use at once: on PostgreSQL a 10,000-entry list's
# patient look-up spent more time waiting on its 20 round trips, one after the other, than in Python.
SEARCHES_AT_ONCE = 4

Search = list[tuple[str, str]]
T = TypeVar("T")


def chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    """``items`` in runs of ``size`` (the ids of one search each)."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def id_chunks(fhir: FhirClient, items: Sequence[str]) -> Iterable[list[str]]:
    """``items`` in runs as long as one search of this client may carry."""
    return chunks(items, fhir.capabilities.search_batch)


async def search_each(fhir: FhirClient, rtype: str, searches: list[Search]) -> list[list[Resource]]:
    """Every search's matches, in order; a long list's chunks ``SEARCHES_AT_ONCE`` at a time
    (separate pooled connections), a single search as it is."""
    return await search_each_kept(fhir, rtype, searches, lambda found: found)


async def search_each_kept(
    fhir: FhirClient, rtype: str, searches: list[Search], keep: Callable[[list[Resource]], T]
) -> list[T]:
    """:func:`search_each`, each search's matches passed through ``keep`` as soon as it answers:
    what a caller keeps of them. Only ``SEARCHES_AT_ONCE`` searches' whole resources are then
    alive at once, not a long list's every one (10,000 Patients: ~28 MiB resident)."""
    if len(searches) <= 1:
        return [keep(await fhir.search_all(rtype, params)) for params in searches]
    gate = asyncio.Semaphore(SEARCHES_AT_ONCE)

    async def one(params: Search) -> T:
        async with gate:
            return keep(await fhir.search_all(rtype, params))

    return list(await asyncio.gather(*(one(params) for params in searches)))


async def find_tasks(fhir: FhirClient, follow_up_ids: list[str]) -> list[Resource | None]:
    """The Tasks of these follow-ups (by our follow-up identifier), in order; None where none is."""
    found: dict[str, Resource] = {}
    for chunk in id_chunks(fhir, sorted(set(follow_up_ids))):
        tokens = ",".join(f"{R.FOLLOW_UP_SYSTEM}|{fid}" for fid in chunk)
        for task in await fhir.search_all("Task", [("identifier", tokens), ("_count", str(len(chunk) * 2))]):
            fid = R.first_identifier_value(task, R.FOLLOW_UP_SYSTEM)
            if fid is not None:
                found[fid] = task
    return [found.get(fid) for fid in follow_up_ids]
