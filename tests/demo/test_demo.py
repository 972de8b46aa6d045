"""``cht-interop demo``: the story end to end on the embedded default, as a user runs it, and what it
says (and its exit status) when a callback never comes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cht_interop.cli import app
from cht_interop.demo.world import ChtWorld, Chw

pytestmark = pytest.mark.e2e


def test_three_patients_end_to_end(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHT_", "FHIR_", "INTEROP_", "OPENHIM_", "DATA_DIR", "DATABASE_URL"))
    }
    args = ["demo", "--patients", "3", "--timeout", "120", "--data-dir", str(tmp_path / "data")]
    run = subprocess.run(
        [sys.executable, "-m", "cht_interop", *args],
        env={**env, "COLUMNS": "200"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "3 patients, 1 CHW(s); callbacks received: 3/3" in out
    assert "ServiceRequests now completed (GET /fhir/ServiceRequest?status=completed): 3/3" in out
    # one row per patient, each with its CHW's outcome as the callback carried it (no mismatch)
    rows = [line for line in out.splitlines() if re.search(r"Patient \w+-000[123]", line)]
    assert len(rows) == 3, out
    assert ["returning to care" in rows[0], "refused" in rows[1], "not located" in rows[2]] == [True] * 3
    assert "callback says" not in out and "missing" not in out.lower()
    assert re.search(r"CHW answer → callback: p50 [\d.]+ s, p90 [\d.]+ s, p99 [\d.]+ s, max [\d.]+ s", out)


def test_a_missing_callback_is_named_and_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second CHW report is lost on its way (the form is never sent): exit 1, and the patient is
    named as missing once the timeout has passed."""
    real = ChtWorld.complete
    lost: list[str] = []

    async def losing_one(self: ChtWorld, chw: Chw, task_id: str, **answer: str) -> None:
        if answer["outcome"] == "refused":  # the second patient's
            lost.append(task_id)
            return
        await real(self, chw, task_id, **answer)

    monkeypatch.setattr(ChtWorld, "complete", losing_one)
    result = CliRunner().invoke(
        app, ["demo", "--patients", "2", "--timeout", "15", "--data-dir", str(tmp_path / "data")]
    )
    assert result.exit_code == 1, result.output
    assert len(lost) == 1
    assert "callbacks received: 1/2" in result.output
    (missing,) = re.findall(r"Missing callbacks \(1\): (Patient \S+)", result.output)
    assert missing.endswith("-0002")
