"""What a credential check costs, by case: the figures behind the gateway's design.

    .venv/bin/python bench/gateway_auth.py [--runs 40]

Against a fresh SQLite client table (``ClientDirectory``), prints the median time of
``ClientAuthenticator.login`` for: a password verified before (the hot path of every request: no
I/O), the same after ``recheck_seconds`` (one primary-key read, no scrypt), a wrong password for a
known client, and an unknown client id. The last two should be within noise of each other (both
run scrypt once; before the dummy hash an unknown id answered ~50x faster, which told which ids
exist). Also the policy lookup a request pays at the gate.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cht_interop.db import Database, migrate
from cht_interop.gateway.auth import ClientAuthenticator
from cht_interop.gateway.clients import ClientDirectory
from cht_interop.gateway.passwords import dummy_hash
from cht_interop.gateway.policy import rule_for
from cht_interop.gateway.principals import Role


async def median_us(runs: int, call: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


async def main(runs: int) -> None:
    url = f"sqlite:///{tempfile.mkdtemp(prefix='gateway-auth-bench-')}/bench.sqlite3"
    migrate(url)
    db = Database(url)
    try:
        directory = ClientDirectory(db)
        await directory.add("emr", frozenset({Role.REQUESTER}), "the-right-password")
        clock = [0.0]
        auth = ClientAuthenticator(directory, clock=lambda: clock[0], recheck_seconds=5)
        dummy_hash()  # made once per process
        await auth.login("emr", "the-right-password")

        async def remembered() -> object:
            return await auth.login("emr", "the-right-password")

        async def rechecked() -> object:
            clock[0] += 10
            return await auth.login("emr", "the-right-password")

        figures = {
            "remembered password (every request)": await median_us(runs * 100, remembered),
            "remembered, row re-read (every 5 s)": await median_us(runs, rechecked),
            "wrong password, known client": await median_us(
                runs, lambda: auth.login("emr", "a-wrong-password")
            ),
            "unknown client id": await median_us(runs, lambda: auth.login("nobody", "a-wrong-password")),
        }
    finally:
        await db.dispose()
    for name, us in figures.items():
        print(f"{name:40s} {us:10.1f} us (median)")
    ratio = figures["unknown client id"] / figures["wrong password, known client"]
    print(f"{'unknown id / wrong password':40s} {ratio:10.2f}")
    n = runs * 1000
    t = time.perf_counter()
    for _ in range(n):
        rule_for("GET", "/fhir/Patient/123/_history/2")
    print(f"{'policy lookup (a late /fhir rule)':40s} {(time.perf_counter() - t) / n * 1e6:10.1f} us")


if __name__ == "__main__":
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--runs", type=int, default=40)
    asyncio.run(main(parser.parse_args().runs))
