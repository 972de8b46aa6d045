"""`cht-interop up` as a user runs it: a real process on a loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cht_interop.gateway.credentials import SECRET_FILE
from tests.support.live import free_port

pytestmark = pytest.mark.e2e


def _start(
    data_dir: Path, port: int, *, sandbox_port: int | None = None, **extra_env: str
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTEROP_", "DATABASE_URL", "DATA_DIR"))}
    env.update(extra_env)
    args = ["up", "--port", str(port), "--data-dir", str(data_dir)]
    if sandbox_port is not None:
        args += ["--cht-sandbox", "--cht-sandbox-port", str(sandbox_port)]
        env = {k: v for k, v in env.items() if not k.startswith("CHT_")}
    return subprocess.Popen(
        [sys.executable, "-m", "cht_interop", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str], base: str, path: str = "/health/ready") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"`up` exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{base}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("`up` did not become ready")


def _stop_with_ctrl_c(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def test_up_serves_authenticated_fhir_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    proc = _start(data_dir, port)
    try:
        _wait_ready(proc, base)
        assert httpx.get(f"{base}/health/live").json() == {"status": "ok"}
        password = (data_dir / SECRET_FILE).read_text().strip()
        assert httpx.get(f"{base}/fhir/Patient").status_code == 401
        assert httpx.get(f"{base}/mediator/").status_code == 401
        auth = ("interop-client", password)
        assert httpx.get(f"{base}/fhir/Patient", auth=("interop-client", "wrong")).status_code == 401
        created = httpx.post(
            f"{base}/fhir/Patient",
            json={"resourceType": "Patient", "identifier": [{"system": "cht", "value": "p-1"}]},
            auth=auth,
        )
        assert created.status_code == 201, created.text
        patient_id = created.json()["id"]
    finally:
        first_output = _stop_with_ctrl_c(proc)
    assert password in first_output  # printed once, on the run that generated it
    assert (data_dir / "cht-interop.sqlite3").exists()

    proc = _start(data_dir, port)
    try:
        _wait_ready(proc, base)
        again = httpx.get(f"{base}/fhir/Patient/{patient_id}", auth=auth)
        assert again.status_code == 200
        assert again.json()["identifier"][0]["value"] == "p-1"
    finally:
        second_output = _stop_with_ctrl_c(proc)
    assert password not in second_output


@pytest.mark.parametrize("access_log", ["true", "false"])
def test_access_log_can_be_switched_off(tmp_path: Path, access_log: str) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(tmp_path / "data", port, ACCESS_LOG=access_log)
    try:
        _wait_ready(proc, base)
        assert httpx.get(f"{base}/health/live", timeout=5).status_code == 200
    finally:
        out = _stop_with_ctrl_c(proc)
    logged = '"GET /health/live HTTP/1.1" 200' in out
    assert logged is (access_log == "true"), out[-2000:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_api_and_the_sandbox_gracefully(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (or a service manager's SIGTERM) shuts both servers down, lifespans included, and `up`
    exits with status 0."""
    port, sandbox_port = free_port(), free_port()
    proc = _start(tmp_path / "data", port, sandbox_port=sandbox_port)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}")
        _wait_ready(proc, f"http://127.0.0.1:{sandbox_port}", "/sandbox/health")
    finally:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert out.count("Application shutdown complete.") == 2, out
    assert out.count("Finished server process") == 2, out
