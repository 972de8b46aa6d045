"""What `up --cht-sandbox` tells a person: every URL, where the passwords are, a command to try
next; and each log line once (the API's and the sandbox's uvicorn servers log the same words)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.live import free_port

pytestmark = pytest.mark.e2e


def _wait(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def test_the_banner_and_each_log_line_once(tmp_path: Path) -> None:
    port, sandbox_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    ours = ("INTEROP_", "DATABASE_URL", "DATA_DIR", "CHT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "cht_interop", "up", "--port", str(port), "--data-dir", str(data_dir)),
            *("--cht-sandbox", "--cht-sandbox-port", str(sandbox_port)),
        ],
        env={**env, "COLUMNS": "60"},  # a narrow terminal must not break a URL or a command
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    api, sandbox = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sandbox_port}"
    try:
        _wait(f"{api}/health/ready", proc)
        _wait(f"{sandbox}/sandbox/health", proc)
        secret = (data_dir / "interop-client.secret").resolve()
        tried = subprocess.run(  # the banner's "Try:" command (checked to be this one below)
            ["bash", "-c", f'curl -sS -u "interop-client:$(cat {secret})" {api}/fhir/metadata'],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert '"resourceType":"CapabilityStatement"' in tried.stdout.replace(" ", ""), tried
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    lines = out.splitlines()
    password = secret.read_text().strip()
    for expected in (
        f"{api}/mediator",
        f"{api}/fhir",
        f"{api}/fhir/metadata",
        f"{api}/docs",
        f"{sandbox}/sandbox/chw",
        f"the password is in {secret}",
        f"the password is in {(data_dir / 'cht-sandbox-admin.secret').resolve()}",
        f"(generated now, shown once: {password})",
    ):
        assert any(expected in line for line in lines), (expected, out)
    (try_line,) = [line for line in lines if line.startswith("Try: ")]
    command = try_line.removeprefix("Try: ")
    assert command == f'curl -u "interop-client:$(cat {secret})" {api}/fhir/metadata'

    # each line once, and the sandbox's say whose they are
    logged = [line for line in lines if re.match(r"(INFO|WARNING|ERROR): ", line)]
    twice = [line for line, n in Counter(logged).items() if n > 1]
    assert not twice, out
    assert "INFO:     Application startup complete." in logged
    assert "INFO:     cht-sandbox: Application startup complete." in logged
    assert f"INFO:     cht-sandbox: Uvicorn running on {sandbox} (Press CTRL+C to quit)" in logged
