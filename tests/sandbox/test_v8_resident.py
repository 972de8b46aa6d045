"""V8's fixed share of ``up --cht-sandbox``'s resident set: the library's pages that only loading
it read are dropped, and the optimising compilers never run (``sandbox/js.py``). Measured in a
fresh interpreter: V8's flags are set once per process, by the first isolate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import json, os, uuid
from cht_interop.sandbox.js import JsRuntime

def resident_kib():
    segments, current = {}, None
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and ":" not in fields[0]:
            library = len(fields) > 5 and fields[5].endswith("libmini_racer.so")
            current = f"{fields[1]} {fields[2]}" if library else None
        elif current and fields[0] == "Rss:":
            segments[current] = segments.get(current, 0) + int(fields[1])
    return segments

runtime = JsRuntime()
for _ in range(500):  # enough calls for V8 to tier hot functions up, when it may
    doc = {"_id": str(uuid.uuid4()), "type": "data_record", "fields": {"n": 1}}
    runtime.relevant("doc.type === 'data_record'", doc)
    runtime.map_payload(doc, {"id": {"expr": "doc._id"}, "n": {"path": "doc.fields.n"}}, "k")
print(json.dumps({"segments": resident_kib(), "heap": runtime.heap_stats()}), flush=True)
os._exit(0)  # the report is out; no need to wait for V8's threads
"""


def _probe() -> dict[str, dict[str, int]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, timeout=120, check=True
    )
    result: dict[str, dict[str, int]] = json.loads(done.stdout)
    return result


def test_the_v8_library_keeps_only_the_pages_it_uses_and_runs_no_optimised_code() -> None:
    """Before: the symbol tables of its read-only segment (offset 0) stayed resident, ~20 MiB,
    and V8 compiled hot rules to machine code (an executable heap, and ~4 MiB more of the
    library's code paged in)."""
    probe = _probe()
    read_only = probe["segments"]["r--p 00000000"]
    assert read_only < 5 * 1024, f"{read_only} KiB of the library's read-only segment resident"
    assert probe["heap"]["total_heap_size_executable"] == 0
