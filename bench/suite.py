"""Every benchmark in one command: a table on the terminal and a JSON file with the machine noted.

    .venv/bin/python bench/suite.py [--quick] [--only singles bundles ...] [--out bench/results.json]

Everything runs as production does: ``cht-interop serve`` / ``worker`` / ``up`` as their own
processes, the load from this process over loopback HTTP, the CHT played by the test double
(``tests/support/cht_double.py``) and the requesting system by a callback receiver, both served
here on loopback. Scenarios (``--only`` picks some):

- ``singles``: ``POST /mediator/service-request`` one follow-up each, at 8 and 32 clients, on
  SQLite (one ``serve``: SQLite takes one serving process) and PostgreSQL with 1 and 2 ``serve``
  processes (clients spread over both): follow-ups/s, p50/p99 latency;
- ``bundles``: 1,000-entry LTFU list Bundles, follow-ups/s;
- ``list``: one 10,000-patient list, from submit to its last CHT record (``serve`` + ``worker``);
- ``callbacks``: Encounters posted as the CHT's push at 100/s, on SQLite as deployed (``up``, one
  process) and PostgreSQL (``serve`` + ``worker``): the POST's p50/p99, the rate
  sustained, and Encounter-write → callback-received p50/p99;
- ``subscriptions``: a FHIR Encounter create's p50/p99 with 10 and with 100,000 active Subscriptions;
- ``memory``: resident memory of ``up`` (in all, anonymous and file-backed) idle, holding 100,000
  follow-ups once written and once the CHT holds their records, and at its peak (and during what);
- ``memory-sandbox``: the same for ``up --cht-sandbox`` (the CHT sandbox, and its own SQLite store
  of the CHT records, inside ``up``'s process);
- ``reference``: the reference mediator's shape of work for the same follow-ups (patient look-up,
  organization look-up, Subscription create, CHT record: four HTTP calls each) against the same
  servers, as a ratio to ``singles``.

``--singles N`` sets the follow-ups per ``singles`` case; ``--singles-cases sqlite:1:8 ...`` runs
only those ``kind:serves:clients`` cases of ``singles``.
``--callback-rate R`` and ``--callbacks N`` set the ``callbacks`` scenario's offered rate and
count (e.g. ``--callback-rate 20 --callbacks 400`` for the latency target at 20/s); ``--kinds
postgresql`` runs it on one database only.
``--list-cases sqlite:1 postgresql:1`` runs ``list`` on these databases and worker counts only.
``--memory-follow-ups N`` sets how many follow-ups ``memory`` (and ``memory-sandbox``) holds, and
``--memory-written-only`` stops it once they are written (the CHT's records still being sent).
``--quick`` shrinks every size (a smoke run, ~2 min); figures from it are not for comparing.
The machine is noisy: compare runs made back to back, or ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import memory, scenarios

Scenario = Callable[["Sizes"], list[dict[str, Any]]]


@dataclass(frozen=True)
class Sizes:
    singles: int = 2000
    singles_cases: tuple[str, ...] = scenarios.SINGLES_CASES
    bundles: int = 5
    list_entries: int = 10_000
    callbacks: int = 1500
    callback_rate: float = 100.0
    callback_kinds: tuple[str, ...] = ("sqlite", "postgresql")
    subscriptions: int = 100_000
    memory_follow_ups: int = 100_000
    memory_until_cht: bool = True
    reference: int = 1000
    list_cases: tuple[str, ...] = ("sqlite:1", "postgresql:1", "postgresql:2")
    pg: str = "postgresql://postgres@127.0.0.1:5432/postgres"


QUICK = Sizes(
    singles=200,
    bundles=1,
    list_entries=1000,
    callbacks=150,
    subscriptions=2000,
    memory_follow_ups=2000,
    reference=100,
)

SCENARIOS: dict[str, Scenario] = {
    "singles": scenarios.singles,
    "bundles": scenarios.bundles,
    "list": scenarios.big_list,
    "callbacks": scenarios.callbacks,
    "subscriptions": scenarios.subscriptions,
    "memory": memory.memory,
    "memory-sandbox": memory.memory_sandbox,
    "reference": scenarios.reference_shape,
}


@dataclass
class Report:
    machine: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def machine() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def print_table(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("scenario", "case", "figure", "value", title="cht-interop benchmarks")
    for row in report.rows:
        for key, value in row["figures"].items():
            shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
            table.add_row(row["scenario"], row["case"], key, shown)
    console = Console()
    console.print(table)
    m = report.machine
    load = m["load_average_at_start"]
    console.print(f"{m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, load {load}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"), help="where the JSON goes")
    parser.add_argument("--pg", default=Sizes.pg, help="PostgreSQL admin DSN")
    parser.add_argument("--singles", type=int, help="follow-ups per 'singles' case (default 2,000)")
    parser.add_argument(
        "--singles-cases",
        nargs="+",
        choices=scenarios.SINGLES_CASES,
        help="'singles' in these kind:serves:clients cases only",
    )
    parser.add_argument(
        "--callback-rate", type=float, help="Encounters offered per second in 'callbacks' (default 100)"
    )
    parser.add_argument("--callbacks", type=int, help="how many Encounters 'callbacks' offers")
    parser.add_argument(
        "--kinds", nargs="+", choices=["sqlite", "postgresql"], help="'callbacks' on these databases only"
    )
    parser.add_argument(
        "--list-cases", nargs="+", help="'list' on these DATABASE:WORKERS only (e.g. sqlite:1 postgresql:1)"
    )
    parser.add_argument(
        "--memory-follow-ups", type=int, help="how many follow-ups 'memory' holds (default 100,000)"
    )
    parser.add_argument(
        "--memory-written-only",
        action="store_true",
        help="'memory' stops once the follow-ups are written, without waiting for every CHT record",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    sizes = Sizes(**{**sizes.__dict__, "pg": args.pg})
    if args.singles is not None:
        sizes = Sizes(**{**sizes.__dict__, "singles": args.singles})
    if args.singles_cases:
        sizes = Sizes(**{**sizes.__dict__, "singles_cases": tuple(args.singles_cases)})
    if args.callback_rate is not None:
        sizes = Sizes(**{**sizes.__dict__, "callback_rate": args.callback_rate})
    if args.callbacks is not None:
        sizes = Sizes(**{**sizes.__dict__, "callbacks": args.callbacks})
    if args.kinds:
        sizes = Sizes(**{**sizes.__dict__, "callback_kinds": tuple(args.kinds)})
    if args.list_cases:
        sizes = Sizes(**{**sizes.__dict__, "list_cases": tuple(args.list_cases)})
    if args.memory_follow_ups is not None:
        sizes = Sizes(**{**sizes.__dict__, "memory_follow_ups": args.memory_follow_ups})
    if args.memory_written_only:
        sizes = Sizes(**{**sizes.__dict__, "memory_until_cht": False})
    report = Report(machine())
    for name in args.only or list(SCENARIOS):
        started = time.monotonic()
        print(f"-- {name} ...", flush=True)
        for row in SCENARIOS[name](sizes):
            report.rows.append({"scenario": name, **row})
        print(f"   {name} took {time.monotonic() - started:.0f} s", flush=True)
        # after each scenario: a later one that fails or is stopped loses only its own figures
        args.out.write_text(
            json.dumps({"machine": report.machine, "quick": args.quick, "rows": report.rows}, indent=2)
        )
    print_table(report)
    print(f"written: {args.out}")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
