"""The sandbox's V8 calls: CPU per record pushed and per task-rules run, for comparing V8's flags.

    .venv/bin/python bench/sandbox_js.py [--records 4000]

A record is what Sentinel's outbound push runs in V8 for an ``INTEROP_FOLLOW_UP``: every shipped
outbound config's ``relevant_to``, and the mapping of those it is relevant to. A task-rules run is
the shipped ``tasks.js`` over 20 contacts with a report each. CPU is the process's (V8 runs on a
thread of its own), so the box's load weighs less than on wall-clock time; run old and new code
alternately (``PYTHONPATH`` pointing at each tree) and compare.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import uuid
from typing import Any

from cht_interop.sandbox.js import JsError, JsRuntime
from cht_interop.sandbox.runner import load_shipped_configuration

WARM_UP = 300


def record() -> dict[str, Any]:
    return {
        "_id": str(uuid.uuid4()),
        "_rev": "1-a",
        "type": "data_record",
        "form": "INTEROP_FOLLOW_UP",
        "reported_date": 1_700_000_000_000,
        "contact": {"_id": "chw", "parent": {"_id": "clinic"}},
        "fields": {
            "patient_uuid": str(uuid.uuid4()),
            "patient_id": "12345",
            "service_request_id": str(uuid.uuid4()),
            "follow_up": {"outcome": "found", "date": "2026-01-01"},
        },
    }


def push(runtime: JsRuntime, outbound: dict[str, Any]) -> None:
    doc = record()
    for name, conf in outbound.items():
        if conf.get("relevant_to") and runtime.relevant(str(conf["relevant_to"]), doc):
            with contextlib.suppress(JsError):  # a mapping needing what this record lacks: work done
                runtime.map_payload(doc, conf.get("mapping") or {}, name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=4000)
    args = parser.parse_args()
    settings, rules, _ = load_shipped_configuration()
    outbound = settings.get("outbound") or {}
    runtime = JsRuntime()
    for _ in range(WARM_UP):
        push(runtime, outbound)
    started = time.process_time()
    for _ in range(args.records):
        push(runtime, outbound)
    per_record = (time.process_time() - started) / args.records
    contacts = [
        {
            "contact": {"_id": f"p{n}", "type": "person", "reported_date": 1_700_000_000_000},
            "reports": [record()],
        }
        for n in range(20)
    ]
    runs = max(1, args.records // 20)
    started = time.process_time()
    for _ in range(runs):
        runtime.tasks(rules.modules, rules.entry, {"_id": "chw"}, contacts, 1_765_000_000_000)
    per_run = (time.process_time() - started) / runs
    print(f"CPU per record pushed {1000 * per_record:.3f} ms")
    print(f"CPU per task-rules run (20 contacts) {1000 * per_run:.3f} ms")
    print(f"load average {os.getloadavg()}", flush=True)
    os._exit(0)  # mini-racer's thread can hold up the interpreter's exit; the figures are out


if __name__ == "__main__":
    main()
