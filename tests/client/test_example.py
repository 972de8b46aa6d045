"""examples/facility_system.py runs as documented: against the real server, it sends its list, and
keeps each CHW's answer (pushed by the CHT) in its records file, then exits once all are in."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.client.conftest import PASSWORD
from tests.client.test_client import push_patients
from tests.ltfu.conftest import encounter_body
from tests.support.live import free_port

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "facility_system.py"


async def test_the_facility_example(server: str, tmp_path: Path) -> None:
    patients = await push_patients(server, 2)
    records = tmp_path / "answers.jsonl"
    env = {**os.environ, "INTEROP_CLIENT_PASSWORD": PASSWORD}
    args = [str(EXAMPLE), "--url", server, "--records", str(records), "--until-answered"]
    args += ["--callback-port", str(free_port()), *patients]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        async with httpx.AsyncClient(base_url=server, auth=("interop-client", PASSWORD)) as http:
            # the CHT has taken both records; the CHWs' reports come back through its push
            deadline = time.monotonic() + 60
            accepted: list[dict[str, str]] = []
            while len(accepted) < 2:
                assert time.monotonic() < deadline and proc.returncode is None, "the follow-ups never started"
                tasks = (await http.get("/fhir/Task", params={"status": "accepted"})).json()
                accepted = [e["resource"] for e in tasks.get("entry") or []]
                await asyncio.sleep(0.1)
            for n, task in enumerate(accepted):
                sr_ref = task["basedOn"][0]["reference"]
                sr = (await http.get(f"/fhir/{sr_ref}")).json()
                cht_id = sr["subject"]["identifier"]["value"]
                outcome = {
                    "url": "urn:cht-interop:ltfu-outcome",
                    "valueCodeableConcept": {"coding": [{"code": ["refused", "not_located"][n]}]},
                }
                based_on = [{"reference": sr_ref}]
                report = encounter_body(cht_id, f"rep-{n}", basedOn=based_on, extension=[outcome])
                assert (await http.post("/mediator/encounter", json=report)).status_code == 201
        async with asyncio.timeout(60):
            output, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = output.decode()
    assert proc.returncode == 0, out
    kept = [json.loads(line) for line in records.read_text().splitlines()]
    assert sorted(r["patient"] for r in kept) == sorted(patients)
    assert sorted(r["outcome"] for r in kept) == ["not_located", "refused"]
    assert all(r["notification"] for r in kept)
    assert out.count("answer for ") == 2
