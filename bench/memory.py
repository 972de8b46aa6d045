"""The memory scenarios of ``bench/suite.py``: ``up``'s resident set idle, holding follow-ups, and
at its peak (with what it was doing then), with the CHT double outside or the sandbox inside."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from bench.scenarios import (
    TIMEOUT,
    Row,
    basic,
    client,
    database,
    list_bundle,
    list_done,
    poll,
    sandbox_url,
    seed,
    up_stack,
)
from tests.reliability.stack import CHT_ADMIN, SwitchableCht

if TYPE_CHECKING:
    from bench.suite import Sizes


MEMORY_FIELDS = ("VmRSS", "RssAnon", "RssFile")


def rss_mib(pid: int) -> dict[str, float]:
    """A process's resident set, MiB: ``VmRSS`` in all, ``RssAnon`` (heap, arenas, stacks: what
    the process allocated) and ``RssFile`` (mapped files: libraries, a memory-mapped database),
    and ``VmHWM`` (the peak of ``VmRSS``). A container's memory limit counts both kinds."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in (*MEMORY_FIELDS, "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


class MemoryWatch:
    """Samples a process's resident set every 0.2 s in a thread; the highest of each figure per
    phase ("seeding", "lists", …), so a peak says what the process was doing."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.phase = "idle"
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(OSError, KeyError):
                self._note(rss_mib(self.pid))

    def _note(self, sample: dict[str, float]) -> None:
        peaks = self.peaks.setdefault(self.phase, dict.fromkeys(MEMORY_FIELDS, 0.0))
        for key in MEMORY_FIELDS:
            peaks[key] = max(peaks[key], sample[key])

    def peak(self) -> tuple[str, dict[str, float]]:
        """The phase with the highest ``VmRSS`` and its peaks."""
        return max(self.peaks.items(), key=lambda item: item[1]["VmRSS"])


def _figures(label: str, sample: dict[str, float]) -> dict[str, float]:
    return {
        f"{label} MiB": sample["VmRSS"],
        f"{label} anon MiB": sample["RssAnon"],
        f"{label} file MiB": sample["RssFile"],
    }


async def write_follow_ups(url: str, patients: list[str]) -> None:
    """Every patient followed up, in 10,000-entry lists, each written before the next is sent."""
    async with client(url) as c:
        for start in range(0, len(patients), 10_000):
            res = await c.post(
                "/mediator/service-request",
                json=list_bundle(patients[start : start + 10_000]),
                headers={"Prefer": "respond-async"},
            )
            status_url = res.headers["content-location"]
            await poll(lambda status_url=status_url: list_done(c, status_url), 0.5)  # type: ignore[misc]
            done = await c.get(status_url)
            written = [e for e in done.json().get("entry", []) if e["response"]["status"] == "201 Created"]
            if done.status_code != 200 or len(written) != len(patients[start : start + 10_000]):
                raise RuntimeError(f"list {status_url}: {done.status_code}, {len(written)} written")


async def cht_holds(cht: SwitchableCht, count: int) -> None:
    """Until the CHT double holds ``count`` records."""

    async def recorded_all() -> bool:
        return len(cht.records_by_service_request()) >= count

    await poll(recorded_all, 0.5)


async def sandbox_doc_count(url: str) -> int:
    async with httpx.AsyncClient(
        base_url=url, timeout=TIMEOUT, headers={"authorization": basic(*CHT_ADMIN)}
    ) as c:
        return int((await c.get("/medic/")).json()["doc_count"])


async def sandbox_holds(url: str, count: int) -> None:
    """Until the sandbox's ``medic`` database holds ``count`` docs."""

    async def recorded_all() -> bool:
        return await sandbox_doc_count(url) >= count

    await poll(recorded_all, 0.5)


def memory(sizes: Sizes) -> list[Row]:
    """``up``'s resident set idle, holding the follow-ups once written (and once the CHT holds their
    records, unless ``memory_until_cht`` is off), and at its peak, with the phase of the peak."""
    return [_memory_of_up(sizes, cht_sandbox=False)]


def memory_sandbox(sizes: Sizes) -> list[Row]:
    """``memory`` for ``up --cht-sandbox``: the sandbox, and the SQLite store it keeps the CHT
    records in, run inside ``up``'s process and count in its resident set."""
    return [_memory_of_up(sizes, cht_sandbox=True)]


def _memory_of_up(sizes: Sizes, *, cht_sandbox: bool) -> Row:
    figures: dict[str, Any] = {}
    with database("sqlite", sizes.pg) as url, up_stack(url, cht_sandbox=cht_sandbox) as (procs, cht):
        up = procs.serving[0]
        time.sleep(2)
        with MemoryWatch(up.pid) as watch:
            figures.update(_figures("idle", rss_mib(up.pid)))
            watch.phase = "seeding patients"
            patients = asyncio.run(seed(procs.url(), sizes.memory_follow_ups))
            watch.phase = "writing lists"
            before = asyncio.run(sandbox_doc_count(sandbox_url(procs))) if cht_sandbox else 0
            asyncio.run(write_follow_ups(procs.url(), patients))
            watch.phase = "holding"
            time.sleep(5)
            figures.update(_figures("holding", rss_mib(up.pid)))
            if sizes.memory_until_cht:
                watch.phase = "sending CHT records"
                if cht_sandbox:
                    asyncio.run(sandbox_holds(sandbox_url(procs), before + len(patients)))
                else:
                    asyncio.run(cht_holds(cht, len(patients)))
                watch.phase = "holding, CHT records sent"
                time.sleep(5)
                figures.update(_figures("after CHT records", rss_mib(up.pid)))
        phase, peak = watch.peak()
        figures.update(_figures("peak", peak))
        figures["peak during"] = phase
        figures["VmHWM MiB"] = rss_mib(up.pid)["VmHWM"]
    cht_kind = "CHT sandbox inside" if cht_sandbox else "CHT double"
    return {"case": f"up (embedded, {cht_kind}), {sizes.memory_follow_ups:,} follow-ups", "figures": figures}
