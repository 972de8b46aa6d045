"""The CHT client's own CPU per record: httpx against the pooled aiohttp session.

    PYTHONPATH=$PWD/src .venv/bin/python bench/cht_records.py [--records 5000] [--pairs 2]

The CHT double (``tests/support/cht_double.py``) serves in a child process, so this process's CPU
is the client's alone: ``--records`` concurrent ``write_record`` calls (256 at once, as a worker
holds them) through ``ChtClient`` and its pacer (16 slots, batches of 100), after 200 to warm up.
Alternates the two transports ``--pairs`` times; prints CPU ms per record and wall seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from cht_interop.cht.client import ChtClient
from cht_interop.cht.pacing import ChtPacer
from cht_interop.cht.records import follow_up_record_id, record_doc
from cht_interop.kit.pooled_http import PooledHttp

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 200
SERVE = """
import sys, time
from tests.support.cht_double import ChtDouble
from tests.support.live import serve_in_thread
with serve_in_thread(ChtDouble().app) as url:
    print(url, flush=True)
    sys.stdin.read()
"""


def record(n: int, run: str) -> dict[str, Any]:
    body = {"_meta": {"form": "interop_follow_up"}, "patient_uuid": f"p-{n}", "service_request_id": f"sr-{n}"}
    return record_doc(follow_up_record_id(f"{run}-{n}"), body, reported_date_ms=1764072000000)


async def one_run(url: str, transport: str, records: int) -> tuple[float, float]:
    """(client CPU ms per record, wall seconds) for ``records`` writes over ``transport``."""
    run = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(timeout=30) as http:
        pooled = PooledHttp(timeout_seconds=30) if transport == "aiohttp" else None
        client = ChtClient(
            url, "admin", "pass-admin-1", http, pacer=ChtPacer(16, batch_size=100), pooled=pooled
        )
        held = asyncio.Semaphore(256)

        async def write(n: int) -> None:
            async with held:
                await client.write_record(record(n, run))

        await asyncio.gather(*(write(n) for n in range(WARM_UP)))
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(write(n) for n in range(WARM_UP, WARM_UP + records)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if pooled is not None:
            await pooled.aclose()
    return 1000 * cpu / records, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    double = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert double.stdout is not None
        url = double.stdout.readline().strip()
        for pair in range(args.pairs):
            for transport in ("httpx", "aiohttp"):
                per_record, wall = asyncio.run(one_run(url, transport, args.records))
                print(f"pair {pair + 1} {transport:8s} {per_record:.3f} ms CPU per record, {wall:.1f} s")
    finally:
        double.terminate()
        double.wait()


if __name__ == "__main__":
    main()
