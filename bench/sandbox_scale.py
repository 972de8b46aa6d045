"""CHT sandbox at scale: the cost of one record and of one ``_find`` with 0 and with N documents.

    .venv/bin/python bench/sandbox_scale.py [--docs 100000] [--records 200] [--finds 200]

A record is ``POST /api/v2/records`` (an ``INTEROP_FOLLOW_UP`` whose ``patient_uuid`` is no CHT
contact, the case that used to scan every document) plus Sentinel processing the change (hydration
looks the subject up, ``mark_for_outbound`` runs). A ``_find`` is ``POST /medic/_find`` selecting
by ``type`` and ``form`` (first 25). Both go through the sandbox app (ASGI, no sockets) with the
shipped configuration; the N documents (reports, people, places) are written before it starts.
The two sandboxes run side by side and take turns (one call each), so the machine's load weighs on
both alike. Prints the median cost at 0 and at N documents and their ratio (target <= 1.2).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cht_interop.sandbox import views
from cht_interop.sandbox.app import create_sandbox_app
from cht_interop.sandbox.config import SandboxConfig
from cht_interop.sandbox.runner import load_shipped_configuration
from cht_interop.sandbox.sentinel import CHECKPOINT
from cht_interop.sandbox.store import MEDIC, DocStore

ADMIN = ("admin", "Bench-admin-pw-1")
HEADERS = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "Authorization": "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode(),
}


def _filler(i: int) -> dict[str, Any]:
    """Half follow-up records, a quarter people, a quarter other reports; every one indexed."""
    kind = i % 4
    if kind in (0, 1):
        return {
            "_id": f"record-{i:07d}",
            "type": "data_record",
            "form": "INTEROP_FOLLOW_UP",
            "fields": {"patient_uuid": f"patient-{i:07d}"},
            "reported_date": 1_700_000_000_000 + i,
        }
    if kind == 2:
        return {
            "_id": f"person-{i:07d}",
            "type": "person",
            "name": f"Person {i}",
            "patient_id": f"{100000 + i}",
            "parent": {"_id": "hc-1", "parent": {"_id": "district-1"}},
        }
    return {
        "_id": f"visit-{i:07d}",
        "type": "data_record",
        "form": "home_visit",
        "fields": {"patient_id": f"{100000 + i - 1}"},
        "reported_date": 1_700_000_000_000 + i,
    }


def fill(path: Path, n_docs: int) -> float:
    """Write ``n_docs`` docs and mark them processed by Sentinel; returns seconds taken."""
    store = DocStore(path, indexer=views.emit, index_version=views.VIEWS_VERSION)
    t0 = time.perf_counter()
    try:
        for start in range(0, n_docs, 1000):
            store.bulk(MEDIC, [_filler(i) for i in range(start, min(start + 1000, n_docs))])
        store.set_counter(CHECKPOINT, store.last_seq(MEDIC))  # Sentinel starts after them
    finally:
        store.close()
    return time.perf_counter() - t0


@dataclass
class Running:
    label: str
    client: httpx.AsyncClient
    sentinel: Any
    record_ms: list[float] = field(default_factory=list)
    find_ms: list[float] = field(default_factory=list)


async def _one_record(run: Running) -> None:
    body = {"_meta": {"form": "INTEROP_FOLLOW_UP"}, "patient_uuid": f"unknown-{uuid.uuid4()}"}
    t0 = time.perf_counter()
    r = await run.client.post("/api/v2/records", json=body, headers=HEADERS)
    await run.sentinel.process_pending()
    run.record_ms.append((time.perf_counter() - t0) * 1000)
    assert r.status_code == 200 and r.json()["success"], r.text


async def _one_find(run: Running) -> None:
    selector = {"selector": {"type": "data_record", "form": "INTEROP_FOLLOW_UP"}, "limit": 25}
    t0 = time.perf_counter()
    r = await run.client.post("/medic/_find", json=selector, headers=HEADERS)
    run.find_ms.append((time.perf_counter() - t0) * 1000)
    assert r.status_code == 200 and len(r.json()["docs"]) == 25, r.text


async def measure(paths: dict[str, Path], *, records: int, finds: int) -> list[Running]:
    """Both sandboxes run side by side and take turns, one call each, so the machine's load
    weighs on both alike; returns each one's timings."""
    settings, rules, _translations = load_shipped_configuration()
    async with contextlib.AsyncExitStack() as stack:
        runs: list[Running] = []
        for label, path in paths.items():
            config = SandboxConfig(
                data_path=path,
                admin_username=ADMIN[0],
                admin_password=ADMIN[1],
                app_settings=settings,
                task_rules=rules,
            )
            app = create_sandbox_app(config)
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://sandbox")
            )
            runs.append(Running(label, client, app.state.sandbox.sentinel))
        for run in runs:
            await run.sentinel.process_pending()
        for _ in range(records):
            for run in runs:
                await _one_record(run)
        for _ in range(finds):
            for run in runs:
                await _one_find(run)
        return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--finds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sandbox-scale-") as tmp:
        empty, full = Path(tmp) / "empty.sqlite3", Path(tmp) / "full.sqlite3"
        fill(empty, 0)
        fill_s = fill(full, args.docs)
        print(f"filled {args.docs} docs in {fill_s:.1f} s")
        runs = asyncio.run(
            measure({"0": empty, str(args.docs): full}, records=args.records, finds=args.finds)
        )
        print(f"{'docs':>8} {'record ms':>10} {'_find ms':>9}   (medians)")
        for run in runs:
            rec, find = statistics.median(run.record_ms), statistics.median(run.find_ms)
            print(f"{run.label:>8} {rec:>10.2f} {find:>9.2f}")
        base, big = runs
        rec_ratio = statistics.median(big.record_ms) / statistics.median(base.record_ms)
        find_ratio = statistics.median(big.find_ms) / statistics.median(base.find_ms)
        print(f"{'ratio':>8} {rec_ratio:>10.2f} {find_ratio:>9.2f}   (target <= 1.2)")


if __name__ == "__main__":
    main()
